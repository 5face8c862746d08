"""The package's C kernels (`_tokenization/merge_kernel.c`, `_tokenization/encode_kernel.c`): built once by the system
C compiler, cached, loaded
through ctypes. `load_library(source)` is the one way in (`is_built(source)`: whether it would be quick).

Why C: these loops must be compiled, and a JIT (numba, which they used before) takes seconds on a fresh checkout
(~4 CPU seconds for the BPE trainer's, more than its merges of a 42 MB corpus), while `cc -O2` builds one of these
files in ~0.3 s. A library is cached under `files.cache_dir("c-kernels")`, named by a hash of its source, the compiler,
the flags and the platform, so an edited source or another compiler builds a new one; it is written atomically (a
temporary name, then a rename), so processes building it at once never load a half-written file. With no compiler
(`$CC`, else cc, gcc or clang on PATH), or when the build fails, `load_library` raises `EngineUnavailable` with the
reason, and the caller falls back to its Python twin.
"""

import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from cs336_basics.fileio import cache_dir

FLAGS = ("-O2", "-std=c99", "-shared", "-fPIC")
_KEEP_BUILDS = 4  # libraries kept per kernel (other versions of its source, e.g. other checkouts sharing the cache)


class EngineUnavailable(RuntimeError):
    """A C kernel cannot be built or loaded here (no compiler, or it failed); the message says why."""


def find_compiler() -> str | None:
    """$CC if set (a command line, such as "ccache gcc"; if it does not exist the build fails and says so), else cc,
    gcc or clang on PATH."""
    if os.environ.get("CC"):
        return os.environ["CC"]
    return next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)


def compiler_exists() -> bool:
    """Whether `find_compiler()`'s command names an executable that exists (the tests of the C kernels need one)."""
    cc = find_compiler()
    return cc is not None and bool(_command(cc)) and shutil.which(_command(cc)[0]) is not None


def _command(cc: str) -> list[str]:
    """$CC as an argument list: a path to a program as is (even with spaces or backslashes), else split like a shell."""
    if shutil.which(cc) or os.path.exists(cc):
        return [cc]
    try:
        return shlex.split(cc)
    except ValueError:  # (unbalanced quotes: taken as one name, whose build then fails and says so)
        return [cc]


_lock = threading.Lock()
_loaded: dict[Path, ctypes.CDLL | EngineUnavailable] = {}  # source -> its library, or why it is unavailable


def load_library(source: Path) -> ctypes.CDLL:
    """The library built from `source`, building it on first use. Raises EngineUnavailable (every later call for the
    same source raises the same one: a process tries once)."""
    with _lock:
        if source not in _loaded:
            try:
                _loaded[source] = _load(source)
            except EngineUnavailable as e:
                _loaded[source] = e
        if isinstance(_loaded[source], EngineUnavailable):
            raise _loaded[source]
        return _loaded[source]


def is_built(source: Path) -> bool:
    """Whether `load_library(source)` would be quick: the library is loaded in this process already, or its build
    for this compiler is in the cache (then loading it takes about a millisecond; a build takes ~0.1-0.3 s)."""
    with _lock:
        if source in _loaded:
            return not isinstance(_loaded[source], EngineUnavailable)
    cc = find_compiler()
    path = None if cc is None else _cached_path(source, cc)
    return path is not None and path.exists()


def _cached_path(source: Path, cc: str) -> Path | None:
    """Where the library built from `source` by `cc` is cached (named by a hash of the source, the compiler, the
    flags and the platform), or None when caches are off."""
    directory = cache_dir("c-kernels")
    if directory is None:
        return None
    text = source.read_bytes()
    key = hashlib.sha256(b"|".join([text, cc.encode(), " ".join(FLAGS).encode(), _platform_tag()])).hexdigest()
    return directory / f"{source.stem}-{key[:24]}{_suffix()}"


def _load(source: Path) -> ctypes.CDLL:
    cc = find_compiler()
    if cc is None:
        raise EngineUnavailable("no C compiler found (set CC, or install cc, gcc or clang)")
    path = _cached_path(source, cc)
    if path is not None:
        if path.exists():
            try:
                return ctypes.CDLL(str(path))
            except OSError:  # truncated or foreign: build it again
                path.unlink(missing_ok=True)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            library = ctypes.CDLL(str(_build(cc, source, path)))
        except OSError:  # a cache directory that cannot be made, written or loaded from: build as with caches off
            with contextlib.suppress(OSError):
                path.unlink()
        else:
            _prune(path.parent, f"{source.stem}-*{_suffix()}", keep=_KEEP_BUILDS)
            return library
    # caches off: build into a private directory, removed once the library is loaded
    with tempfile.TemporaryDirectory(prefix="cs336-c-", ignore_cleanup_errors=True) as tmp:
        built = Path(tmp) / f"{source.stem}{_suffix()}"
        try:
            return ctypes.CDLL(str(_build(cc, source, built)))
        except OSError as e:  # (a temporary directory that may not run code, a compiler for another machine)
            raise EngineUnavailable(f"what the C compiler {cc!r} built from {source.name} cannot be loaded: {e}") from e


def _prune(directory: Path, pattern: str, keep: int) -> None:
    """Remove all but the `keep` newest files matching `pattern` (builds of other versions of a source); a file that
    cannot be removed (loaded by a process, on Windows) stays."""
    builds = sorted(directory.glob(pattern), key=_mtime, reverse=True)
    for old in builds[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # (removed meanwhile by another process)
        return 0.0


def _build(cc: str, source: Path, path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            command = [*_command(cc), *FLAGS, "-o", tmp, str(source)]
            done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            raise EngineUnavailable(f"the C compiler {cc!r} could not run: {e}") from e
        if done.returncode != 0:
            output = done.stderr.strip()[-2000:] or "(no output)"
            failed = f"the C compiler {cc!r} failed (exit {done.returncode}) on {source.name}"
            raise EngineUnavailable(f"{failed}:\n{output}")
        os.chmod(tmp, 0o755)  # (mkstemp's file is private: a cache shared by several users must read it)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _platform_tag() -> bytes:
    return f"{sys.platform}|{platform.machine()}|{ctypes.sizeof(ctypes.c_void_p)}".encode()


def _suffix() -> str:
    return ".dll" if sys.platform == "win32" else (".dylib" if sys.platform == "darwin" else ".so")
