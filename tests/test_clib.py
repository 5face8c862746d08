"""Building and loading the C kernels (cs336_basics/_tokenization/clib.py), shown on the BPE merge engine
(_tokenization/merge_kernel.py);
the kernels' results are checked against their references in tests/test_train_bpe.py and tests/test_bpe_encode.py."""

import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from cs336_basics import bpe
from cs336_basics._tokenization import clib, merge_kernel
from cs336_basics._tokenization.bpe_reference import merge_reference
from cs336_basics.bpe import TrainStats, merge_pretokens, train_bpe

from .conftest import NEEDS_CC

WORDS = {b"low": 5, b"lower": 2, b"widest": 3, b"newest": 6, b"abcabc": 4, b"aaaa": 3}
HANDOUT = [(b"s", b"t"), (b"e", b"st"), (b"o", b"w"), (b"l", b"ow"), (b"w", b"est"), (b"n", b"e")]


@pytest.fixture
def fresh_engine(monkeypatch, tmp_path):
    """No library loaded in this process yet, and an empty cache directory."""
    monkeypatch.setattr(clib, "_loaded", {})
    monkeypatch.setenv("CS336_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "c-kernels"


def fake_compiler(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-cc"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


posix_only = pytest.mark.skipif(sys.platform == "win32", reason="the fake compiler is a shell script")


@NEEDS_CC
def test_builds_once_then_loads_from_the_cache(fresh_engine, monkeypatch):
    assert merge_pretokens(WORDS, 30, backend="c") == merge_reference(WORDS, 30)
    built = list(fresh_engine.iterdir())
    assert len(built) == 1 and built[0].suffix in (".so", ".dylib", ".dll")  # no temporary file left behind
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(clib, "_loaded", {})  # as a new process would: found in the cache, not rebuilt
    assert merge_pretokens(WORDS, 30, backend="c") == merge_reference(WORDS, 30)
    assert [p.stat().st_mtime_ns for p in fresh_engine.iterdir()] == [mtime]


@NEEDS_CC
def test_is_built_says_whether_loading_is_quick(fresh_engine, monkeypatch):
    """`is_built` (what "auto" asks before merging a small problem in C) is False on an empty cache and builds
    nothing; True once built, also for a new process (found in the cache); False for another compiler's build."""
    assert not merge_kernel.built()
    assert not fresh_engine.exists()  # (it looked, and built nothing)
    merge_kernel.load()
    assert merge_kernel.built()
    monkeypatch.setattr(clib, "_loaded", {})  # as a new process would: the build is in the cache
    assert merge_kernel.built()
    monkeypatch.setenv("CC", "/nonexistent/cc")  # another compiler: its build is not there, and it cannot run
    assert not merge_kernel.built()


def test_is_built_is_false_without_a_compiler(fresh_engine, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent")
    assert not merge_kernel.built()
    with pytest.raises(clib.EngineUnavailable):
        merge_kernel.load()
    assert not merge_kernel.built()  # (a failed load is remembered as unavailable)


@NEEDS_CC
def test_a_corrupt_cached_library_is_rebuilt(fresh_engine):
    """A truncated or foreign file in the cache is built again (in a new process: this one keeps its loaded copy)."""
    merge_kernel.load()
    (path,) = fresh_engine.iterdir()
    path.unlink()  # a new file, not a write into the one this process has mapped
    path.write_bytes(b"not a shared library")
    script = "from cs336_basics.bpe import merge_pretokens; print(merge_pretokens({b'abab': 2}, 2, backend='c'))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "[(b'a', b'b'), (b'ab', b'ab')]"
    assert path.read_bytes()[:4] != b"not "


@NEEDS_CC
def test_caches_off_still_builds(monkeypatch):
    monkeypatch.setattr(clib, "_loaded", {})
    monkeypatch.setenv("CS336_CACHE_DIR", "")
    counts = {b"low": 5, b"lower": 2, b"widest": 3, b"newest": 6}
    assert merge_pretokens(counts, 6, backend="c") == HANDOUT


@NEEDS_CC
def test_a_cache_directory_it_cannot_make_still_builds(monkeypatch, tmp_path):
    """A cache path that cannot be a directory (here under a file; a read-only home on a CI box is the same case):
    built into a temporary directory instead, not an error."""
    monkeypatch.setattr(clib, "_loaded", {})
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CS336_CACHE_DIR", str(blocker / "cache"))
    assert merge_pretokens(WORDS, 30, backend="c") == merge_reference(WORDS, 30)
    assert blocker.read_text() == "not a directory"


@posix_only
def test_a_library_that_will_not_load_is_unavailable_not_a_crash(fresh_engine, monkeypatch, tmp_path):
    """A "compiler" that succeeds but writes something that is not a library (a cross-compiler, a noexec
    directory): EngineUnavailable naming the load error, and "auto" falls back to Python."""
    monkeypatch.setenv("CC", fake_compiler(tmp_path, 'while [ "$1" != "-o" ]; do shift; done; echo junk > "$2"'))
    with pytest.raises(clib.EngineUnavailable, match="cannot be loaded"):
        merge_kernel.load()
    monkeypatch.setattr(bpe, "PYTHON_MERGE_MAX_WORK", 0)
    with pytest.warns(UserWarning, match="cannot be loaded"):
        assert merge_pretokens(WORDS, 12) == merge_reference(WORDS, 12)
    assert not fresh_engine.exists() or not any(fresh_engine.iterdir())  # the junk is not kept in the cache


@NEEDS_CC
@posix_only
def test_cc_may_be_a_command_line(fresh_engine, monkeypatch):
    """$CC as a shell would take it ("ccache gcc", "gcc -m64"): split into arguments (here "env /path/to/cc")."""
    monkeypatch.setenv("CC", f"env {shutil.which(clib.find_compiler())}")
    assert merge_pretokens(WORDS, 30, backend="c") == merge_reference(WORDS, 30)


def test_no_compiler_is_a_clear_error(fresh_engine, monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(clib.EngineUnavailable, match="no-such-cc"):
        merge_pretokens(WORDS, 5, backend="c")
    with pytest.raises(clib.EngineUnavailable, match="no-such-cc"):  # tried once per process, same answer
        merge_kernel.load()
    with pytest.raises(clib.EngineUnavailable, match="no-such-cc"):  # (the merge thread's error, not a RuntimeError)
        merge_pretokens(WORDS, 5, backend="c", progress=True)
    monkeypatch.setattr(clib.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC")
    monkeypatch.setattr(clib, "_loaded", {})
    with pytest.raises(clib.EngineUnavailable, match="no C compiler found"):
        merge_kernel.load()


@posix_only
def test_a_failing_compiler_is_reported_with_its_output(fresh_engine, monkeypatch, tmp_path):
    monkeypatch.setenv("CC", fake_compiler(tmp_path, 'echo "error: boom at line 7" >&2; exit 1'))
    with pytest.raises(clib.EngineUnavailable, match="(?s)failed \\(exit 1\\) on merge_kernel.c.*boom at line 7"):
        merge_kernel.load()
    assert not fresh_engine.exists() or not any(fresh_engine.iterdir())  # nothing half-written is left


@posix_only
def test_auto_falls_back_to_python_with_a_warning(fresh_engine, monkeypatch, tmp_path):
    """No working compiler: "auto" on a large problem merges in Python, says why, and gets the same merges."""
    monkeypatch.setenv("CC", fake_compiler(tmp_path, "exit 1"))
    monkeypatch.setattr(bpe, "PYTHON_MERGE_MAX_WORK", 0)  # every problem counts as large
    path = tmp_path / "corpus.txt"
    path.write_text("low low lower widest newest newest " * 20)
    stats = TrainStats()
    with pytest.warns(UserWarning, match="C engine is unavailable"):
        vocab, merges = train_bpe(path, 256 + 12, [], stats=stats, num_workers=1)
    assert stats.merge_backend == "python"
    assert merges == merge_pretokens(bpe.count_pretokens(path, []), 12, backend="python")


@NEEDS_CC
def test_auto_uses_c_for_large_problems(fresh_engine, monkeypatch, tmp_path):
    monkeypatch.setattr(bpe, "PYTHON_MERGE_MAX_WORK", 0)
    path = tmp_path / "corpus.txt"
    path.write_text("low low lower widest newest newest " * 20)
    stats = TrainStats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_bpe(path, 256 + 12, [], stats=stats, num_workers=1)
    assert stats.merge_backend == "c"


@NEEDS_CC
def test_merge_words_checks_its_arguments(fresh_engine):
    wstart, wcnt, done = np.array([0, 3], np.int64), np.array([1]), np.zeros(1, np.int64)
    with pytest.raises(ValueError, match="needs data"):
        merge_kernel.merge_words(b"abab", wstart, wcnt, 2, done)  # wstart must end at len(data)
    with pytest.raises(TypeError, match="progress must be a contiguous int64 array"):
        merge_kernel.merge_words(b"aba", wstart, wcnt, 2, np.zeros(1, np.int32))
    with pytest.raises(ValueError, match="num_merges=-100 must be >= 0"):  # (C would write below its token table)
        merge_kernel.merge_words(b"aba", wstart, wcnt, -100, done)
    assert merge_kernel.merge_words(b"aba", wstart, wcnt, 0, done).shape == (0, 2)
    ids = merge_kernel.merge_words(b"aba", wstart, wcnt, 5, done)
    assert ids.tolist() == [[98, 97], [97, 256]]  # (b, a) > (a, b) on the tie; then nothing is left to merge
    assert done[0] == 2


@NEEDS_CC
def test_an_edited_source_builds_a_new_library(fresh_engine, monkeypatch, tmp_path):
    """The cached library is named by a hash of the source (and compiler, flags): an edit never loads a stale one; the
    cache keeps the newest _KEEP_BUILDS builds of a kernel (here 1)."""
    monkeypatch.setattr(clib, "_KEEP_BUILDS", 1)
    merge_kernel.load()
    (first,) = fresh_engine.iterdir()
    edited = tmp_path / "merge_kernel.c"
    edited.write_text(merge_kernel.SOURCE.read_text() + "\n/* edited */\n")
    monkeypatch.setattr(merge_kernel, "SOURCE", edited)
    monkeypatch.setattr(clib, "_loaded", {})
    assert merge_pretokens(WORDS, 30, backend="c") == merge_reference(WORDS, 30)
    (second,) = fresh_engine.iterdir()
    assert second.name != first.name and second.name.startswith("merge_kernel-")
