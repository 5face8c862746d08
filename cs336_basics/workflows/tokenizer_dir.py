"""Loading a tokenizer directory for the `tokenize` command: its fingerprint, and a cache of the parsed files.

`load_tokenizer(directory)` -> (Tokenizer, fingerprint). The fingerprint (a sha256 of ids, tokens, merges and
special tokens) goes into every token file's sidecar; the cache spares the workers of `tokenize` parsing GPT-2's
JSON and byte encoding again.
"""

import hashlib
import os
import sys
from operator import itemgetter
from pathlib import Path

import numpy as np

from cs336_basics import tokenizer_files
from cs336_basics.fileio import atomic_write_bytes, cache_dir
from cs336_basics.tokenizer import Tokenizer
from cs336_basics.tokenizer_files import MERGES_FILE, SPECIAL_TOKENS_FILE, VOCAB_FILE, load_tokenizer_dir


def tokenizer_fingerprint(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str]) -> str:
    """sha256 over the ids, tokens, merges and special tokens: equal fingerprints encode text identically.

    Each list of byte strings goes in as its count, its lengths (int64) and its bytes, so the input parses back
    unambiguously; no Python object per token is made (GPT-2's tokenizer: ~10 ms)."""
    ids, sections = _sections(vocab, merges, special_tokens)
    digest = hashlib.sha256(b"cs336-tokenizer-v2")
    digest.update(np.array(ids, dtype=np.int64).tobytes())
    for items in sections.values():
        digest.update(np.array([len(items), *map(len, items)], dtype=np.int64).tobytes())
        digest.update(b"".join(items))
    return digest.hexdigest()


def _sections(vocab, merges, special_tokens) -> tuple[list[int], dict[str, list[bytes]]]:
    """The sorted ids, and the tokenizer as lists of byte strings: what the fingerprint and a cache entry hold."""
    ids = sorted(vocab)
    return ids, {
        "tokens": list(map(vocab.__getitem__, ids)),
        "firsts": list(map(itemgetter(0), merges)),
        "seconds": list(map(itemgetter(1), merges)),
        "specials": [special.encode("utf-8") for special in special_tokens],
    }


def load_tokenizer(directory: str | os.PathLike) -> tuple[Tokenizer, str]:
    """(Tokenizer.from_dir(directory), its fingerprint), through a cache of the parsed files: GPT-2's tokenizer
    loads in about half the time (the files' JSON and GPT-2 byte encoding are not parsed again).

    The cache holds plain arrays (`np.savez`, read with allow_pickle=False: an entry cannot run code) in
    $CS336_CACHE_DIR (default $XDG_CACHE_HOME/cs336_basics, else ~/.cache/cs336_basics; set it to "" to turn the
    cache off), named by a sha256 of the tokenizer files' bytes and of the loader's code and library versions, so
    an edited file or another version of this package never reads a stale entry. It is written atomically and
    keeps the _CACHE_ENTRIES newest entries; an entry that cannot be read or written is rebuilt or skipped, never
    an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"tokenizer directory {str(directory)!r} does not exist")
    cache_path = _tokenizer_cache_path(directory)
    loaded = _read_cache_entry(cache_path) if cache_path is not None else None
    if loaded is None:
        vocab, merges, special_tokens = load_tokenizer_dir(directory)
        fingerprint = tokenizer_fingerprint(vocab, merges, special_tokens)
        if cache_path is not None:
            try:
                _write_cache_entry(cache_path, vocab, merges, special_tokens, fingerprint)
                _prune(cache_path.parent, keep=_CACHE_ENTRIES)
            except OSError:  # a read-only or full cache directory: go on without it
                pass
    else:
        vocab, merges, special_tokens, fingerprint = loaded
    return Tokenizer(vocab, merges, special_tokens), fingerprint


_CACHE_ENTRIES = 8  # tokenizer cache entries kept (GPT-2's is ~1 MB); the least recently written go first


def _packed(items: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    return np.frombuffer(b"".join(items), dtype=np.uint8), np.array(list(map(len, items)), dtype=np.int64)


def _unpacked(data: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    raw, ends = data.tobytes(), np.cumsum(lengths).tolist()
    return [raw[e - n : e] for e, n in zip(ends, lengths.tolist(), strict=True)]


def _write_cache_entry(path: Path, vocab, merges, special_tokens, fingerprint: str) -> None:
    ids, sections = _sections(vocab, merges, special_tokens)
    arrays = {"ids": np.array(ids, dtype=np.int64), "fingerprint": np.array(fingerprint)}
    for name, items in sections.items():
        arrays[name], arrays[name + "_lengths"] = _packed(items)
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))


def _read_cache_entry(path: Path):
    """(vocab, merges, special_tokens, fingerprint) from a cache entry, or None (missing or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            vocab = dict(zip(z["ids"].tolist(), _unpacked(z["tokens"], z["tokens_lengths"]), strict=True))
            merges = list(zip(*(_unpacked(z[k], z[k + "_lengths"]) for k in ("firsts", "seconds")), strict=True))
            specials = [s.decode("utf-8") for s in _unpacked(z["specials"], z["specials_lengths"])]
            return vocab, merges, specials, str(z["fingerprint"])
    except Exception:  # missing, truncated, or from code that changed without changing the key: rebuild
        return None


def _prune(directory: Path, keep: int) -> None:
    entries = sorted(directory.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        old.unlink(missing_ok=True)


def _tokenizer_cache_path(directory: Path) -> Path | None:
    root = cache_dir("tokenizers")
    if root is None:
        return None
    key = hashlib.sha256(f"{sys.version}|{np.__version__}".encode())
    code = [__file__, tokenizer_files.__file__]
    data = [directory / name for name in (VOCAB_FILE, MERGES_FILE, SPECIAL_TOKENS_FILE)]
    for path in code + data:
        key.update(b"|%s|" % os.fsencode(Path(path).name))
        try:
            key.update(Path(path).read_bytes())
        except FileNotFoundError:  # (special_tokens.json is optional; a missing file is reported by the loader)
            key.update(b"<missing>")
    return root / f"{key.hexdigest()[:32]}.npz"
