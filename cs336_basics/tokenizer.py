"""Byte-level BPE tokenizer, exact to GPT-2's (and tiktoken's) encoding, with constant-memory streaming.

The public class; the encoding engine is `encoder.Encoder` (caches, pieces, numpy tables), BPE of pre-tokens is
`encode_kernel`, the pre-tokenization rules are `pretokenize`, and `tokenizer_reference` is the plain version that
the tests hold the engine to. docs/tokenizer.md explains the design and its measurements.

>>> tok = Tokenizer.from_files("encoder.json", "vocab.bpe", special_tokens=["<|endoftext|>"])  # GPT-2's files
>>> tok.encode("hello world<|endoftext|>")
[31373, 995, 50256]
"""

import os
from collections.abc import Iterable, Iterator

import numpy as np

from cs336_basics._tokenization.encode_kernel import Merges
from cs336_basics._tokenization.encoder import DEFAULT_CACHE_SIZE, Encoder
from cs336_basics.pretokenize import GPT2_PATTERN, WHITESPACE_CHARS, SpecialTokens, last_safe_cut
from cs336_basics.tokenizer_files import load_tokenizer_dir, load_vocab_and_merges

__all__ = ["DEFAULT_CACHE_SIZE", "GPT2_PATTERN", "WHITESPACE_CHARS", "Tokenizer"]


class Tokenizer:
    """Encode str <-> token ids with a byte-level BPE vocabulary and merge list (GPT-2 conventions).

    vocab: id -> token bytes; it must contain every single byte that the text can produce.
    merges: (a, b) pairs in the order they were learned; earlier merges apply first; each a + b must be in vocab.
    special_tokens: strings that always encode to one id; those not in vocab are appended with new ids.
    cache_size: entries per encoding cache (each is cleared when full: memory stays bounded on any stream).

    >>> vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab"}
    >>> Tokenizer(vocab, [(b"a", b"b")]).encode("abab a")  # pre-tokens "abab", " a"
    [256, 256, 32, 97]
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: list[str] | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ):
        if not isinstance(vocab, dict):
            raise TypeError(f"vocab must be a dict[int, bytes], got {type(vocab).__name__}")
        if cache_size < 1:
            raise ValueError(f"cache_size={cache_size} must be at least 1")
        if set(map(type, vocab.values())) - {bytes}:
            token_id, token = next((i, t) for i, t in vocab.items() if not isinstance(t, bytes))
            raise TypeError(f"vocab[{token_id!r}] must be bytes, got {type(token).__name__}")
        self.vocab: dict[int, bytes] = dict(zip(map(int, vocab), vocab.values(), strict=True))
        self.merges: list[tuple[bytes, bytes]] = [(bytes(a), bytes(b)) for a, b in merges]
        ids_descending = sorted(self.vocab, reverse=True)  # duplicates: the lowest id is written last, and wins
        tokens_descending = list(map(self.vocab.__getitem__, ids_descending))
        self._token_to_id: dict[bytes, int] = dict(zip(tokens_descending, ids_descending, strict=True))
        bpe_tables = Merges(self._token_to_id, self.merges)

        self.special_tokens: list[str] = []
        special_ids: dict[str, int] = {}
        next_id = max(self.vocab, default=-1) + 1
        for special in SpecialTokens(special_tokens or []).tokens:  # checked, duplicates dropped, in order
            token = special.encode("utf-8")
            if token not in self._token_to_id:  # appended, as the handout asks
                self.vocab[next_id] = token
                self._token_to_id[token] = next_id
                next_id += 1
            special_ids[special] = self._token_to_id[token]
            self.special_tokens.append(special)
        self._engine = Encoder(bpe_tables, special_ids, cache_size)

    @classmethod
    def from_files(
        cls,
        vocab_filepath: str | os.PathLike,
        merges_filepath: str | os.PathLike,
        special_tokens: list[str] | None = None,
    ) -> "Tokenizer":
        """Load GPT-2-format files: train-bpe output (vocab.json, merges.txt) or OpenAI's encoder.json, vocab.bpe."""
        vocab, merges = load_vocab_and_merges(vocab_filepath, merges_filepath)
        return cls(vocab, merges, special_tokens)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> "Tokenizer":
        """Load a tokenizer directory written by `save_tokenizer` (vocab.json, merges.txt, special_tokens.json)."""
        vocab, merges, special_tokens = load_tokenizer_dir(directory)
        return cls(vocab, merges, special_tokens)

    def encode(self, text: str) -> list[int]:
        """str -> token ids, exactly as GPT-2's encoder with these special tokens. Example: "hi" -> [5303] (GPT-2)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._engine.encode(text)

    def encode_to_array(self, text: str, dtype=np.int64) -> np.ndarray:
        """`encode` as a numpy array (what the dataset command writes; no list of Python ints is made). `dtype`
        (int64): an integer type that holds every id (the dataset command's uint16: converted block by block)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype={dtype!r} must be a numpy integer type that holds every token id") from None
        if dtype != np.int64 and (dtype.kind not in "iu" or np.iinfo(dtype).max < self.vocab_size - 1):
            largest = self.vocab_size - 1
            raise ValueError(f"dtype={dtype.name} must be an integer type that holds every token id (up to {largest})")
        return self._engine.encode_to_array(text, dtype)

    def encode_iterable(self, iterable: Iterable[str], buffer_size: int = 1 << 16) -> Iterator[int]:
        """Lazily yield the ids of "".join(iterable), equal to `encode` of it for any chunking.

        Text is buffered until about `buffer_size` characters are pending, then encoded up to the last position
        where the pre-tokenizer splits whatever text follows (`find_safe_cut`), and the rest is kept. When a
        buffer has no such position (a long run without spaces), the next try waits until the buffer has doubled,
        so the work stays linear. Memory is bounded by twice `buffer_size` plus the longest chunk plus twice the
        longest run of text without such a position (one pre-token cannot be split).
        """
        if buffer_size < 1:
            raise ValueError(f"buffer_size={buffer_size} must be at least 1")
        if isinstance(iterable, str | bytes):
            raise TypeError("encode_iterable takes an iterable of str chunks (e.g. an open file), not one string")
        pending: list[str] = []
        pending_len = 0
        want = buffer_size  # pending characters before the next search for a cut
        searched = 0  # the buffer's prefix with no space or class cut (see pretokenize.last_safe_cut)
        for chunk in iterable:
            if not isinstance(chunk, str):
                raise TypeError(f"encode_iterable chunks must be str, got {type(chunk).__name__}")
            pending.append(chunk)
            pending_len += len(chunk)
            if pending_len < want:
                continue
            text = "".join(pending)
            cut = last_safe_cut(text, self._engine.specials, searched)
            if cut > 0:
                yield from self.encode(text[:cut])
                text = text[cut:]
            # none found: search again when the buffer has doubled, only its new part (the last chars searched
            # could not be judged yet: they wait for what follows)
            want, searched = (
                (buffer_size, 0) if cut > 0 else (2 * len(text), max(0, len(text) - self._engine.specials.max_len - 1))
            )
            pending = [text]
            pending_len = len(text)
        text = "".join(pending)
        if text:
            yield from self.encode(text)

    def find_safe_cut(self, text: str) -> int:
        """A position i where encode(text[:i] + rest) == encode(text[:i]) + encode(rest) for every `rest`, or 0
        (`pretokenize.last_safe_cut`: the last such cut of a few cheap kinds, not necessarily the largest)."""
        return last_safe_cut(text, self._engine.specials)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Token ids -> the concatenated token bytes. Example (GPT-2): [31373, 995] -> b"hello world"."""
        ids = list(ids)
        try:
            return b"".join(map(self.vocab.__getitem__, ids))
        except (KeyError, TypeError):
            for position, token_id in enumerate(ids):
                if not isinstance(token_id, int) and not hasattr(token_id, "__index__"):
                    raise TypeError(f"token id {token_id!r} at position {position} is not an integer") from None
                if token_id not in self.vocab:
                    raise ValueError(
                        f"token id {token_id} at position {position} is not in the vocabulary "
                        f"({len(self.vocab)} tokens, ids {min(self.vocab)}..{max(self.vocab)})"
                    ) from None
            raise

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> str; byte sequences that are not valid UTF-8 become U+FFFD, as in GPT-2 and tiktoken."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (ids are 0..vocab_size-1 for a contiguous vocab)."""
        return max(self.vocab, default=-1) + 1
