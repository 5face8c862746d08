"""Downloads that resume, and stream decompression: the network and compression half of `prepare`.

`download` fetches a URL into DEST through DEST.part with HTTP range requests (an interrupted download continues
where it stopped, within one call and across calls) and checks the size against the server's announcement and an
expected size, and a sha256 when given. `decompress` streams a .gz or .zst file into a text file. Both write their
output atomically: it exists only when complete and checked.
"""

import gzip
import hashlib
import os
import zlib
from pathlib import Path

from cs336_basics.fileio import atomic_write_bytes

DOWNLOAD_ATTEMPTS = 3
CHUNK = 1 << 20
COMPRESSED_SUFFIXES = (".gz", ".zst")


class DownloadError(RuntimeError):
    """A download failed (HTTP error, connection lost, wrong size or checksum); the message says what to do."""


def _open(url: str, start: int, timeout: float):
    from urllib.request import Request, urlopen

    headers = {"User-Agent": "cs336-basics-prepare"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urlopen(Request(url, headers=headers), timeout=timeout)


def _announced_total(response, start: int) -> tuple[int, int | None]:
    """(offset the body starts at, total file size or None) from a 200 or 206 response."""
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
        try:
            first, total = content_range.split(" ", 1)[1].split("-")[0], content_range.rsplit("/", 1)[1]
            return int(first), None if total == "*" else int(total)
        except (IndexError, ValueError) as e:
            raise DownloadError(f"the server sent a malformed Content-Range {content_range!r}") from e
    length = response.headers.get("Content-Length")
    return 0, int(length) if length is not None and length.isdigit() else None


def download(
    url: str,
    dest: str | os.PathLike,
    expected_bytes: int | None = None,
    sha256: str | None = None,
    progress: bool = False,
    attempts: int = DOWNLOAD_ATTEMPTS,
    timeout: float = 60.0,
) -> int:
    """Download `url` to `dest` (through DEST.part, resumed with range requests); return its size in bytes.

    Raises DownloadError on an HTTP error, a connection still cut after `attempts` tries (DEST.part is kept: the
    next call resumes it), a size other than the server announced or `expected_bytes`, or a wrong sha256 (then
    DEST.part is deleted). `dest` exists only when everything checked out.
    """
    from urllib.error import HTTPError, URLError

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    total, bar = None, None
    try:
        for attempt in range(1, attempts + 1):
            have = part.stat().st_size if part.is_file() else 0
            if total is not None and have == total:
                break
            try:
                response = _open(url, have, timeout)
            except HTTPError as e:
                if e.code == 416 and have and have == (total or expected_bytes):
                    break  # the part is already whole
                raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
            except (URLError, OSError) as e:
                if attempt == attempts:
                    raise DownloadError(f"download of {url} failed: {e}; rerun to retry") from e
                continue
            with response:
                offset, total = _announced_total(response, have)
                if expected_bytes is not None and total is not None and total != expected_bytes:
                    raise DownloadError(
                        f"{url}: the server announces {total:,} bytes, but this file should have "
                        f"{expected_bytes:,}; the URL may point to another version of the file"
                    )
                if progress and bar is None:
                    from tqdm import tqdm

                    bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name)
                _receive(response, part, offset, bar)
            if total is None or part.stat().st_size >= total:
                break
        size = part.stat().st_size if part.is_file() else 0
        if total is not None and size != total:
            how = "more than" if size > total else f"only {size:,} of"
            if size > total:
                part.unlink()
            raise DownloadError(
                f"download of {url} stopped with {how} the {total:,} bytes the server announced, after {attempts} "
                f"attempts; rerun to resume from {part}"
            )
        if expected_bytes is not None and size != expected_bytes:
            raise DownloadError(f"{url}: downloaded {size:,} bytes, expected {expected_bytes:,}")
    finally:
        if bar is not None:
            bar.close()
    if sha256 is not None:
        actual = _sha256(part)
        if actual != sha256.lower():
            part.unlink()
            raise DownloadError(f"{url}: sha256 {actual} does not match the expected {sha256}; deleted the download")
    os.replace(part, dest)
    return size


def _receive(response, part: Path, offset: int, bar) -> None:
    """Append the response body to `part` from `offset` (0: start over), stopping quietly if the connection drops."""
    import http.client

    with open(part, "r+b" if part.is_file() else "wb") as f:
        f.truncate(offset)
        f.seek(offset)
        while True:
            try:
                chunk = response.read(CHUNK)
            except (http.client.IncompleteRead, OSError) as e:  # cut mid-transfer: keep what arrived
                if isinstance(e, http.client.IncompleteRead) and e.partial:
                    f.write(e.partial)
                break
            if not chunk:
                break
            f.write(chunk)
            if bar is not None:
                bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _reader(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zst":
        try:
            import zstandard
        except ImportError as e:
            raise ValueError(
                f"{path.name} is zstd-compressed, which needs the zstandard package: "
                "`pip install 'cs336-basics[prepare]'` (or `uv sync --extra prepare`)"
            ) from e
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    raise ValueError(f"{path.name}: unknown compression; expected one of {COMPRESSED_SUFFIXES}")


def decompress(src: str | os.PathLike, dest: str | os.PathLike) -> int:
    """Stream-decompress a .gz or .zst file into `dest` (atomic); return the decompressed size.

    Corrupt or truncated input raises ValueError and leaves no `dest`.
    """
    src, dest = Path(src), Path(dest)
    written = 0

    def copy(out) -> None:
        nonlocal written
        with _reader(src) as f:
            while chunk := f.read(CHUNK):
                out.write(chunk)
                written += len(chunk)

    try:
        atomic_write_bytes(dest, copy)
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{src} is not valid {src.suffix[1:]} data ({e}); delete it to download it again") from e
    except Exception as e:  # zstandard.ZstdError
        if type(e).__name__ == "ZstdError":
            raise ValueError(f"{src} is not valid zstd data ({e}); delete it to download it again") from e
        raise
    return written
