"""The BPE trainer's C merge engine (`_tokenization/merge_kernel.c`), built and loaded by `clib` on first use, called
through ctypes.

`merge_words` returns the same merges as `merge_python.merge_python` and the reference (tests/test_train_bpe.py).
"""

import ctypes
from pathlib import Path

import numpy as np

from cs336_basics._tokenization.clib import EngineUnavailable, is_built, load_library

SOURCE = Path(__file__).with_name("merge_kernel.c")
MAX_BYTES = (1 << 31) // 3 - 1  # of distinct pre-tokens: positions and position-list nodes (<= 3 a byte) are int32
_I64P = ctypes.POINTER(ctypes.c_int64)

__all__ = ["EngineUnavailable", "built", "load", "merge_words"]


def built() -> bool:
    """Whether the engine is loaded or its build is cached, so that `load` takes about a millisecond, not a build."""
    return is_built(SOURCE)


def load():
    """The engine's ctypes function (the library is built on first use). Raises EngineUnavailable."""
    try:
        fn = load_library(SOURCE).bpe_merge_words
    except AttributeError as e:  # (a build that does not export the function)
        raise EngineUnavailable(f"the library built from {SOURCE.name} lacks bpe_merge_words: {e}") from e
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_char_p, _I64P, _I64P, ctypes.c_int64, ctypes.c_int64, _I64P, _I64P]
    return fn


def merge_words(data: bytes, wstart: np.ndarray, wcnt: np.ndarray, num_merges: int, progress: np.ndarray) -> np.ndarray:
    """Up to `num_merges` merges of the words data[wstart[w] : wstart[w + 1]] (each at least 2 bytes long) counted
    wcnt[w] times, as an (n, 2) array of token ids: 0..255 are the bytes, then one per merge, except that a merge whose
    bytes exist reuses that token. progress[0] (int64) counts the merges done: the call releases the GIL, so another
    thread may show it. Raises EngineUnavailable, MemoryError, or ValueError for 2 GiB of words or more."""
    if num_merges < 0:
        raise ValueError(f"num_merges={num_merges} must be >= 0")
    if len(data) > MAX_BYTES:
        raise ValueError(f"the words hold {len(data):,} bytes; the C engine takes {MAX_BYTES:,} (use backend='python')")
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
        raise ValueError(f"the words hold {len(data):,} bytes; the C engine takes {MAX_BYTES:,} (use backend='python')")
    if n == -3:
        raise RuntimeError("the C BPE merge engine lost count of a pair (a bug; backend='python' avoids it)")
    if n < 0:
        raise MemoryError("the C BPE merge engine ran out of memory")
    return merges[: 2 * n].reshape(n, 2)
