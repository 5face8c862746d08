"""The C merge engine (`_bpe_merge.c`): built once by the system C compiler, cached, and called through ctypes.

Why C: the engine must be compiled, and numba's JIT takes ~4 CPU seconds on a fresh checkout (more than the merges of
a 42 MB corpus), while `cc -O2` builds this file in ~0.3 s. The shared library is cached under
`files.cache_dir("bpe-engine")`, named by a hash of the source, the compiler and the flags, so an edited source or
another compiler builds a new one; it is written atomically (a temporary name, then a rename), so processes that
build it at the same time do not see each other's half-written file. With no compiler (`$CC`, else cc, gcc or clang
on PATH), or when it fails, `load()` raises `EngineUnavailable` with the reason and the caller uses another engine.
"""

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from cs336_basics.files import cache_dir

SOURCE = Path(__file__).with_name("_bpe_merge.c")
FLAGS = ("-O2", "-std=c99", "-shared", "-fPIC")
_I64P = ctypes.POINTER(ctypes.c_int64)


class EngineUnavailable(RuntimeError):
    """The C engine cannot be built or loaded here (no compiler, or it failed); the message says why."""


def find_compiler() -> str | None:
    """$CC if set (even if it does not exist: the build then fails and says so), else cc, gcc or clang on PATH."""
    if os.environ.get("CC"):
        return os.environ["CC"]
    return next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)


_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "fn" -> the ctypes function, or "error" -> the EngineUnavailable raised


def load():
    """The engine's ctypes function, building the library on first use. Raises EngineUnavailable (every later call
    raises the same one: a process tries once)."""
    with _lock:
        if "fn" not in _loaded and "error" not in _loaded:
            try:
                _loaded["fn"] = _load()
            except EngineUnavailable as e:
                _loaded["error"] = e
        if "error" in _loaded:
            raise _loaded["error"]
        return _loaded["fn"]


def _load():
    cc = find_compiler()
    if cc is None:
        raise EngineUnavailable("no C compiler found (set CC, or install cc, gcc or clang)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"|".join([source, cc.encode(), " ".join(FLAGS).encode(), _platform_tag()])).hexdigest()
    directory = cache_dir("bpe-engine")
    if directory is None:  # caches off: build into a private directory, removed once the library is loaded
        with tempfile.TemporaryDirectory(prefix="cs336-bpe-") as tmp:
            return _open(_build(cc, Path(tmp) / "_bpe_merge.so"))
    path = directory / f"_bpe_merge-{key[:24]}{_suffix()}"
    if path.exists():
        try:
            return _open(path)
        except OSError:  # truncated or foreign: build it again
            path.unlink(missing_ok=True)
    return _open(_build(cc, path))


def _build(cc: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            done = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            raise EngineUnavailable(f"the C compiler {cc!r} could not run: {e}") from e
        if done.returncode != 0:
            output = done.stderr.strip()[-2000:] or "(no output)"
            failed = f"the C compiler {cc!r} failed (exit {done.returncode}) on {SOURCE.name}"
            raise EngineUnavailable(f"{failed}:\n{output}")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _open(path: Path):
    fn = ctypes.CDLL(str(path)).bpe_merge_words
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_char_p, _I64P, _I64P, ctypes.c_int64, ctypes.c_int64, _I64P, _I64P]
    return fn


def _platform_tag() -> bytes:
    return f"{sys.platform}|{platform.machine()}|{ctypes.sizeof(ctypes.c_void_p)}".encode()


def _suffix() -> str:
    return ".dll" if sys.platform == "win32" else (".dylib" if sys.platform == "darwin" else ".so")


def merge_words(data: bytes, wstart: np.ndarray, wcnt: np.ndarray, num_merges: int, progress: np.ndarray) -> np.ndarray:
    """Up to `num_merges` merges of the words data[wstart[w] : wstart[w + 1]] (each at least 2 bytes long) counted
    wcnt[w] times, as an (n, 2) array of token ids: 0..255 are the bytes, then one per merge, except that a merge whose
    bytes exist reuses that token. progress[0] (int64) counts the merges done: the call releases the GIL, so another
    thread may show it. Raises EngineUnavailable, MemoryError, or ValueError for 2 GiB of words or more."""
    fn = load()
    wstart, wcnt = (np.ascontiguousarray(a, dtype=np.int64) for a in (wstart, wcnt))
    if not isinstance(data, bytes) or wstart.shape != (len(wcnt) + 1,) or wstart[-1] != len(data):
        raise ValueError("merge_words needs data (bytes), wstart (len(wcnt) + 1 offsets ending at len(data)), wcnt")
    if progress.dtype != np.int64 or not progress.flags.c_contiguous:
        raise TypeError(f"progress must be a contiguous int64 array, not {progress.dtype}")
    merges = np.zeros(2 * max(num_merges, 0), dtype=np.int64)
    ptr = [a.ctypes.data_as(_I64P) for a in (wstart, wcnt, merges, progress)]
    n = fn(data, ptr[0], ptr[1], len(wcnt), num_merges, ptr[2], ptr[3])
    if n == -2:
        raise ValueError(f"the words hold {len(data):,} bytes; the C engine takes under 2**31 (use backend='numba')")
    if n == -3:
        raise RuntimeError("the C BPE merge engine lost count of a pair (a bug; backend='python' avoids it)")
    if n < 0:
        raise MemoryError("the C BPE merge engine ran out of memory")
    return merges[: 2 * n].reshape(n, 2)
