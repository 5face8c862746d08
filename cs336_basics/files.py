"""Atomic file writes: a temporary file beside the target, fsynced, then renamed over it.

A crash mid-write leaves the previous file (or none) in place, never a truncated one. No torch import here, so the
tokenizer and BPE modules can use it cheaply.
"""

import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Call write(f) on a temporary file beside `path`, fsync it, then rename it to `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text: JSON sidecars, tokenizer files, run metadata."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """`obj` as indented JSON (a trailing newline), atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
