"""Byte-level BPE tokenizer, exact to GPT-2's (and tiktoken's) encoding, with constant-memory streaming.

Design (why it is fast without a compiler):

1. Special tokens are split off with one compiled alternation, longest first, so `<|endoftext|><|endoftext|>` wins
   over `<|endoftext|>` when both are special. Text between them is encoded independently, as in GPT-2.
2. The text is cut into *pieces*: a run of whitespace followed by a run of non-whitespace (`\\s*\\S+`, and a final
   `\\s+`). Every position where a non-whitespace character is followed by a whitespace character is a boundary of
   the GPT-2 pre-tokenizer whatever surrounds it (no alternative of the pattern can carry a token from a
   non-space over a following space, and the pattern has no look-behind), so pre-tokenizing each piece on its own
   gives exactly the pre-tokens of the whole text. The split is done by the stdlib `re` module with an explicit
   character class equal to `regex`'s `\\s` (Unicode White_Space), about 3x faster than the GPT-2 pattern itself.
3. A cache maps piece -> token ids. English text has few distinct pieces (" the", " world.", "\\n\\nThe"), so after
   warm-up the whole hot path is C: `re.findall`, `map(dict.__getitem__)` and `chain.from_iterable`.
4. On a cache miss the piece is pre-tokenized with the GPT-2 pattern (the `regex` module) and each pre-token is
   merged through a second cache; a pre-token miss runs rank-based BPE: repeatedly merge the adjacent pair with the
   lowest merge rank (the order of `merges`).

Both caches are bounded (cleared when full), so encoding an arbitrarily large stream holds bounded memory.

>>> tok = Tokenizer.from_files("encoder.json", "vocab.bpe", special_tokens=["<|endoftext|>"])  # GPT-2's files
>>> tok.encode("hello world<|endoftext|>")
[31373, 995, 50256]
"""

import os
import re
from collections.abc import Iterable, Iterator
from itertools import chain

import regex

from cs336_basics.tokenizer_files import load_tokenizer_dir, load_vocab_and_merges

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# The code points `regex` (and tiktoken's Rust regex) match with \s: Unicode White_Space. The stdlib `re` also
# matches U+001C..U+001F with \s, so the piece splitter spells the class out; a test checks it against `regex`.
WHITESPACE_CHARS = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_WS = "[" + re.escape(WHITESPACE_CHARS) + "]"
_NON_WS = "[^" + re.escape(WHITESPACE_CHARS) + "]"
_PIECE_RE = re.compile(f"{_WS}*{_NON_WS}+|{_WS}+")
_GPT2_RE = regex.compile(GPT2_PATTERN)
# Safe streaming cut: a non-whitespace character followed by whitespace (searched from the right).
_WS_CUT_RE = regex.compile(r"\S(?=\s)", flags=regex.REVERSE)
# Further pre-token boundaries that hold whatever surrounds them: letter|(digit or other), digit|(letter or other),
# other|digit. (other|letter is not one: "'s" is a single pre-token.) Used only inside very long non-space runs.
_CLASS_CUT_RE = regex.compile(r"\p{L}(?=[^\s\p{L}])|\p{N}(?=[^\s\p{N}])|[^\s\p{L}\p{N}](?=\p{N})", flags=regex.REVERSE)

_SINGLE_BYTES = [bytes((b,)) for b in range(256)]
_NO_RANK = 1 << 62
DEFAULT_CACHE_SIZE = 1 << 18  # entries per cache; about 200 bytes each, so at most ~50 MB per cache


class _BoundedCache(dict):
    """dict key -> tuple of ids that computes missing keys with `compute` and empties itself when full.

    Subclassing dict keeps the hit path (`cache[key]`, `map(cache.__getitem__, keys)`) entirely in C.
    """

    __slots__ = ("_compute", "_max_size")

    def __init__(self, compute, max_size: int):
        super().__init__()
        self._compute = compute
        self._max_size = max_size

    def __missing__(self, key):
        if len(self) >= self._max_size:
            self.clear()  # cheap and bounded; the hot keys come back within a few hundred KB of text
        value = self._compute(key)
        self[key] = value
        return value


class Tokenizer:
    """Encode str <-> token ids with a byte-level BPE vocabulary and merge list (GPT-2 conventions).

    vocab: id -> token bytes; it must contain every single byte that the text can produce.
    merges: (a, b) pairs in the order they were learned; earlier merges apply first; each a + b must be in vocab.
    special_tokens: strings that always encode to one id; those not in vocab are appended with new ids.

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
        self.vocab: dict[int, bytes] = {}
        for token_id, token in vocab.items():
            if not isinstance(token, bytes):
                raise TypeError(f"vocab[{token_id!r}] must be bytes, got {type(token).__name__}")
            self.vocab[int(token_id)] = token
        self.merges: list[tuple[bytes, bytes]] = [(bytes(a), bytes(b)) for a, b in merges]
        self._token_to_id: dict[bytes, int] = {}
        for token_id in sorted(self.vocab):
            self._token_to_id.setdefault(self.vocab[token_id], token_id)  # duplicates: the lowest id wins

        self._merge_ranks: dict[tuple[bytes, bytes], int] = {}
        for rank, (a, b) in enumerate(self.merges):
            if a + b not in self._token_to_id:
                raise ValueError(f"merges[{rank}] = {(a, b)!r} produces {a + b!r}, which is not in vocab")
            self._merge_ranks.setdefault((a, b), rank)

        self.special_tokens: list[str] = []
        self._special_ids: dict[str, int] = {}
        next_id = max(self.vocab, default=-1) + 1
        for special in special_tokens or []:
            if not isinstance(special, str) or not special:
                raise ValueError(f"special_tokens must be non-empty strings, got {special!r}")
            if special in self._special_ids:
                continue
            token = special.encode("utf-8")
            if token not in self._token_to_id:  # appended, as the handout asks
                self.vocab[next_id] = token
                self._token_to_id[token] = next_id
                next_id += 1
            self._special_ids[special] = self._token_to_id[token]
            self.special_tokens.append(special)
        by_length = sorted(self.special_tokens, key=len, reverse=True)  # longest first: the alternation tries in order
        self._special_re = re.compile("(" + "|".join(map(re.escape, by_length)) + ")") if by_length else None
        self._max_special_len = max(map(len, by_length), default=0)

        self._pretoken_cache = _BoundedCache(self._bpe, cache_size)
        self._piece_cache = _BoundedCache(self._encode_piece, cache_size)
        self._lookup_piece = self._piece_cache.__getitem__

    # ----------------------------------------------------------------------------------------------- construction

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

    # --------------------------------------------------------------------------------------------------- encoding

    def encode(self, text: str) -> list[int]:
        """str -> token ids, exactly as GPT-2's encoder with these special tokens. Example: "hi" -> [5303] (GPT-2)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if self._special_re is None:
            return self._encode_ordinary(text)
        parts = self._special_re.split(text)  # [text, special, text, special, ..., text]
        ids = self._encode_ordinary(parts[0])
        special_ids = self._special_ids
        for i in range(1, len(parts), 2):
            ids.append(special_ids[parts[i]])
            if parts[i + 1]:
                ids += self._encode_ordinary(parts[i + 1])
        return ids

    def encode_iterable(self, iterable: Iterable[str], buffer_size: int = 1 << 16) -> Iterator[int]:
        """Lazily yield the ids of "".join(iterable), equal to `encode` of it for any chunking.

        Text is buffered until about `buffer_size` characters are pending, then encoded up to the last position
        where the pre-tokenizer splits whatever text follows (a non-space followed by a space, outside any
        possible special token), and the rest is kept. Memory is bounded by `buffer_size` plus the longest chunk
        plus the longest run of text without such a position (one pre-token cannot be split).
        """
        if buffer_size < 1:
            raise ValueError(f"buffer_size={buffer_size} must be at least 1")
        if isinstance(iterable, str | bytes):
            raise TypeError("encode_iterable takes an iterable of str chunks (e.g. an open file), not one string")
        pending: list[str] = []
        pending_len = 0
        for chunk in iterable:
            if not isinstance(chunk, str):
                raise TypeError(f"encode_iterable chunks must be str, got {type(chunk).__name__}")
            pending.append(chunk)
            pending_len += len(chunk)
            if pending_len < buffer_size:
                continue
            text = "".join(pending)
            cut = self.find_safe_cut(text)
            if cut > 0:
                yield from self.encode(text[:cut])
                text = text[cut:]
            pending = [text]
            pending_len = len(text)
        text = "".join(pending)
        if text:
            yield from self.encode(text)

    def find_safe_cut(self, text: str) -> int:
        """The largest i such that encode(text[:i] + rest) == encode(text[:i]) + encode(rest) for EVERY rest (0: none).

        Candidates: a non-space followed by a space, the end of a special-token match, or (inside a long run
        without spaces) a letter/digit/other class change that is always a pre-token boundary. The last
        `max special length - 1` characters are never cut: a longer special token starting before the cut could
        still win over a shorter one, so only matches that start before that margin are final.
        """
        n = len(text)
        limit = n - self._max_special_len + 1 if self._max_special_len else n  # chars right of i that must be known
        if limit <= 0:
            return 0
        cut = 0
        m = _WS_CUT_RE.search(text, 0, min(limit, n - 1) + 1)  # "\S" at cut-1 with "\s" at cut, cut <= limit
        if m is not None:
            cut = m.end()
        elif n > 4096:  # no space in a long run: fall back to class changes (rare; keeps the buffer bounded)
            m = _CLASS_CUT_RE.search(text, 0, min(limit, n - 1) + 1)
            if m is not None:
                cut = m.end()
        if self._special_re is not None:
            # Matches that start before `limit` are final: all text they depend on is in `text`. A match's end is a
            # hard boundary, and a space cut inside a match is overtaken by that match's end, so take the maximum.
            for sm in self._special_re.finditer(text):
                if sm.start() >= limit:
                    break
                cut = max(cut, sm.end())
        return cut

    def _encode_ordinary(self, text: str) -> list[int]:
        """Ids of text that contains no special token: pieces through the piece cache, all in C on hits."""
        return list(chain.from_iterable(map(self._lookup_piece, _PIECE_RE.findall(text))))

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        """Piece cache miss: GPT-2 pre-tokens of the piece, each through the pre-token cache."""
        lookup = self._pretoken_cache.__getitem__
        return tuple(chain.from_iterable(map(lookup, _GPT2_RE.findall(piece))))

    def _bpe(self, pretoken: str) -> tuple[int, ...]:
        """Rank-based BPE of one pre-token: merge the adjacent pair with the lowest merge rank until none is left.

        One occurrence at a time (the leftmost of the lowest rank), updating only its two neighbouring pair ranks.
        This equals merging every occurrence of the pair at once because a pair that contains the merged token can
        only have a later rank than the merge that made it (it is learned after the token exists).
        """
        parts = list(map(_SINGLE_BYTES.__getitem__, pretoken.encode("utf-8")))
        get = self._merge_ranks.get
        inf = _NO_RANK
        pair_ranks = [get(pair, inf) for pair in zip(parts[:-1], parts[1:], strict=True)]
        while pair_ranks:
            rank = min(pair_ranks)
            if rank == inf:
                break
            i = pair_ranks.index(rank)
            parts[i] += parts.pop(i + 1)
            del pair_ranks[i]
            if i > 0:
                pair_ranks[i - 1] = get((parts[i - 1], parts[i]), inf)
            if i < len(pair_ranks):
                pair_ranks[i] = get((parts[i], parts[i + 1]), inf)
        token_to_id = self._token_to_id
        try:
            return tuple(token_to_id[p] for p in parts)
        except KeyError as e:
            raise ValueError(
                f"cannot encode {pretoken!r}: byte token {e.args[0]!r} is not in the vocabulary "
                "(a byte-level vocab needs all 256 single bytes)"
            ) from None

    # --------------------------------------------------------------------------------------------------- decoding

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
