"""Tokenizer files in GPT-2's format: `vocab.json` (token -> id) and `merges.txt` ("a b" per line).

Byte strings are written through GPT-2's byte-to-unicode table, which maps each of the 256 bytes to a printable
character (a space becomes "Ġ", a newline "Ċ"), so any token, including bytes that are not valid UTF-8 on their
own, survives the round trip exactly and Hugging Face `tokenizers` and tiktoken can read the files. A tokenizer
directory also holds `special_tokens.json` (a list of strings) when it has special tokens.
"""

import json
import os
from functools import cache
from itertools import accumulate, repeat
from pathlib import Path

from cs336_basics.fileio import atomic_write_text

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
SPECIAL_TOKENS_FILE = "special_tokens.json"


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable bytes map to themselves, the other 68 to chr(256 + n) in byte order.

    Example: bytes_to_unicode()[ord("a")] == "a", bytes_to_unicode()[ord(" ")] == "Ġ".
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


@cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def encode_token(token: bytes) -> str:
    """bytes -> GPT-2 printable string. Example: b" hi" -> "Ġhi"."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


@cache
def _decode_tables() -> tuple[frozenset[str], dict[int, int]]:
    """(the 256 characters of GPT-2's table, a str.translate table from each to the code point of its byte)."""
    table = unicode_to_bytes()
    return frozenset(table), {ord(c): b for c, b in table.items()}


def decode_token(text: str) -> bytes:
    """GPT-2 printable string -> bytes. Example: "Ġhi" -> b" hi"."""
    characters, to_latin1 = _decode_tables()
    if not characters.issuperset(text):
        bad = next(c for c in text if c not in characters)
        raise ValueError(f"token {text!r} has character {bad!r}, which is not in GPT-2's byte table")
    return text.translate(to_latin1).encode("latin-1")  # each character is now the code point of its byte


def decode_tokens(texts: list[str]) -> list[bytes]:
    """decode_token of each string, in one pass over their concatenation (GPT-2's 50,257 tokens: ~36 ms)."""
    characters, to_latin1 = _decode_tables()
    blob = "".join(texts)
    if not characters.issuperset(blob):
        for text in texts:
            decode_token(text)  # raises, naming the token
    data = blob.translate(to_latin1).encode("latin-1")  # one byte per character
    ends = list(accumulate(map(len, texts)))
    return [data[a:b] for a, b in zip([0, *ends], ends, strict=False)]  # (the starts list is one longer)


def save_tokenizer(
    vocab: dict[int, bytes],
    merges: list[tuple[bytes, bytes]],
    directory: str | os.PathLike,
    special_tokens: list[str] | None = None,
) -> None:
    """Write vocab.json, merges.txt (and special_tokens.json) into `directory`, each file atomically."""
    directory = Path(directory)
    encoded = {}
    for token_id, token in sorted(vocab.items()):
        key = encode_token(token)
        if key in encoded:
            raise ValueError(
                f"vocab ids {encoded[key]} and {token_id} both hold {token!r}; vocab.json needs unique tokens"
            )
        encoded[key] = token_id
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / VOCAB_FILE, json.dumps(encoded, ensure_ascii=False, indent=0) + "\n")
    lines = ["#version: 0.2"] + [f"{encode_token(a)} {encode_token(b)}" for a, b in merges]
    atomic_write_text(directory / MERGES_FILE, "\n".join(lines) + "\n")
    if special_tokens:
        atomic_write_text(directory / SPECIAL_TOKENS_FILE, json.dumps(list(special_tokens), ensure_ascii=False) + "\n")


def load_vocab_and_merges(
    vocab_path: str | os.PathLike, merges_path: str | os.PathLike
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Read GPT-2-format files (ours, or OpenAI's encoder.json / vocab.bpe) into (vocab, merges)."""
    for path in (vocab_path, merges_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
    with open(vocab_path, encoding="utf-8") as f:
        encoded_vocab = json.load(f)
    vocab = dict(zip(map(int, encoded_vocab.values()), decode_tokens(list(encoded_vocab)), strict=True))
    with open(merges_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines[0].startswith("#version"):
        lines[0] = ""
    merge_lines = list(filter(None, lines))  # (empty lines are skipped)
    if set(map(str.count, merge_lines, repeat(" "))) - {1}:  # (all C loops: GPT-2's 50,000 lines in ~15 ms)
        line_no, line = next((n, t) for n, t in enumerate(lines, 1) if t and t.count(" ") != 1)
        raise ValueError(f"{merges_path}:{line_no}: expected two tokens separated by one space, got {line!r}")
    decoded = decode_tokens(" ".join(merge_lines).split(" ")) if merge_lines else []
    return vocab, list(zip(decoded[::2], decoded[1::2], strict=True))


def load_tokenizer_dir(directory: str | os.PathLike) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]], list[str]]:
    """(vocab, merges, special_tokens) from a directory written by `save_tokenizer`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"tokenizer directory {str(directory)!r} does not exist")
    vocab, merges = load_vocab_and_merges(directory / VOCAB_FILE, directory / MERGES_FILE)
    special_path = directory / SPECIAL_TOKENS_FILE
    special_tokens = json.loads(special_path.read_text(encoding="utf-8")) if special_path.is_file() else []
    return vocab, merges, special_tokens
