"""Atomic file writes: a temporary file beside the target, fsynced, then renamed over it; and the cache directory.

A crash mid-write leaves the previous file (or none) in place, never a truncated one. The result has the permissions
a plain `open(path, "w")` would give: an existing file's own, else 0o666 less the umask (the temporary file itself is
private, 0600, until then). No torch import here, so the tokenizer and BPE modules can use it cheaply.
"""

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path


def cache_dir(kind: str) -> Path | None:
    """The directory for this package's caches of one kind ("tokenizers", "c-kernels"):
    $CS336_CACHE_DIR/kind, by default $XDG_CACHE_HOME/cs336_basics/kind, else ~/.cache/cs336_basics/kind.
    None when CS336_CACHE_DIR is set to "" (caches off)."""
    root = os.environ.get("CS336_CACHE_DIR")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cs336_basics"
    elif not root:
        return None
    return Path(root) / kind


_UMASK_LOCK = threading.Lock()
_PROC_STATUS = "/proc/self/status"  # Linux's view of this process, "Umask:" included since Linux 4.7


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status); elsewhere set and
    restored under a lock (a file another thread creates in that instant gets the strict 0o077, never 0)."""
    try:
        with open(_PROC_STATUS) as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)
        os.umask(umask)
    return umask


def _plain_write_mode(path: Path) -> int:
    """The permission bits `open(path, "w")` would leave: an existing file keeps its own, a new one 0o666 & ~umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Call write(f) on a temporary file beside `path`, fsync it, then rename it to `path` (atomic on POSIX); the
    file ends with the permissions a plain write would give (see the module docstring)."""

    def write_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    atomic_write_path(path, write_file)


def atomic_write_path(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call write(tmp) with the path of a new temporary file beside `path` (for writers that open a path
    themselves, such as gguf's GGUFWriter), fsync it, then rename it to `path`, with the permissions a plain write
    would give. If `write` raises, the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            os.chmod(tmp, _plain_write_mode(path))
        except OSError:  # a file system without permissions (some network and FUSE mounts): keep mkstemp's
            pass
        write(Path(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text: JSON sidecars, tokenizer files, run metadata."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """`obj` as indented UTF-8 JSON (a trailing newline), atomically: the package's one JSON writer."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


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


def write_dir_atomically(out: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Call fill(tmp) on a fresh temporary directory beside `out`, then rename it to `out`.

    `out` must not exist (or be an empty directory). If `fill` raises, the temporary directory is removed and
    nothing appears at `out`.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"out={str(out)!r} already exists; choose a new directory or delete it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private (0700); the result is an ordinary directory
        fill(tmp)
        for path in tmp.rglob("*"):  # the files are complete on disk before the directory appears
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        if out.is_dir():
            out.rmdir()  # an empty directory the caller made
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
