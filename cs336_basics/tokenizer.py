"""Byte-level BPE tokenizer, exact to GPT-2's (and tiktoken's) encoding, with constant-memory streaming.

Design (why it is fast without a compiler):

1. Special tokens are split off with one compiled alternation, longest first, so `<|endoftext|><|endoftext|>` wins
   over `<|endoftext|>` when both are special. Text between them is encoded independently, as in GPT-2.
2. The text is cut into *pieces*: a run of whitespace followed by a run of non-whitespace (`\\s*\\S+`, and a final
   `\\s+`). Every position where a non-whitespace character is followed by a whitespace character is a boundary of
   the GPT-2 pre-tokenizer whatever surrounds it (no alternative of the pattern can carry a token from a
   non-space over a following space, and the pattern has no look-behind), so pre-tokenizing each piece on its own
   gives exactly the pre-tokens of the whole text. English text has few distinct pieces (" the", " world.",
   "\\n\\nThe"), so a cache of piece -> ids does most of the work.
3. Long texts (from _TABLE_MIN_CHARS characters; what `encode_iterable` and the dataset CLI see) take the numpy
   path: a block's UTF-8 bytes are cut into pieces, hashed and looked up in `_piece_table.PieceTable` all at once,
   with no Python object per piece; every hit is verified against the stored bytes. The pieces that miss are
   pre-tokenized together (one `re` findall over the joined ASCII pieces, `regex` for the rest), their
   pre-tokens looked up in a second table the same way, and only new pre-tokens run BPE (`_bpe_bytes`, rank-based
   merging vectorized over all of them with numpy).
4. Short texts take the dict path: `re.findall` for the pieces, `map(cache.__getitem__)` and
   `chain.from_iterable` (all C); a miss returns an empty slot list that stays in place in the output and is
   filled later (see `_Cache`), all misses of a call encoded in one batch.

Both caches are bounded (cleared when full), so encoding an arbitrarily large stream holds bounded memory.

>>> tok = Tokenizer.from_files("encoder.json", "vocab.bpe", special_tokens=["<|endoftext|>"])  # GPT-2's files
>>> tok.encode("hello world<|endoftext|>")
[31373, 995, 50256]
"""

import gc
import os
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import chain, filterfalse
from operator import itemgetter

import numpy as np

from cs336_basics._bpe_encode import HEAP_MIN, merge
from cs336_basics._piece_table import IntMap, PieceTable, PieceWords, WhitespaceMask, cached_ids, ragged_arange
from cs336_basics.pretokenize import (
    GPT2_ASCII_RE,
    GPT2_PATTERN,
    GPT2_RE,
    PIECE_RE,
    WHITESPACE_CHARS,
    SpecialTokens,
    last_safe_cut,
)
from cs336_basics.tokenizer_files import load_tokenizer_dir, load_vocab_and_merges

__all__ = ["GPT2_PATTERN", "WHITESPACE_CHARS", "Tokenizer"]

_WHITESPACE_SET = frozenset(WHITESPACE_CHARS)
_WHITESPACE_MASK = WhitespaceMask(WHITESPACE_CHARS)
_GROUP_ROUNDS = 8  # pieces with up to this many pre-tokens get their ids by vectorized concatenation
_BATCH_BPE_MIN = 256  # new pre-tokens in one block from which numpy batch BPE beats the per-word loop
_BATCH_BPE_TAIL = 64  # words left in a batch below which the rest finish in the per-word loop
_TABLE_MIN_CHARS = 4096  # texts at least this long go through the numpy piece table (see _piece_table)
_BLOCK_CHARS = 1 << 20  # encode long texts in blocks of about this many chars: bounded lists, a meaningful cache bound

# Entries per cache: the dict of the short-text path (pieces + pre-tokens, ~150 bytes each) and each numpy table
# of the long-text path (pieces; pre-tokens: ~100 bytes each) is cleared when it would hold more.
DEFAULT_CACHE_SIZE = 1 << 20


def raw_bytes_of(raw: bytes, starts: np.ndarray, lengths: np.ndarray) -> bytes:
    """raw[starts[0] : starts[0] + lengths[0]] + raw[starts[1] : ...] + ..., by one numpy gather."""
    return np.frombuffer(raw, dtype=np.uint8)[ragged_arange(starts, lengths)].tobytes()


class _Cache(dict):
    """text -> ids, where looking up a missing key returns that key's slot: an empty list, which is also stored
    under the key (so later lookups of it in the same block are plain C hits, not calls) and in `pending`, and is
    later filled with the key's ids. So one C pass over a block's pieces (`map(cache.__getitem__, pieces)`) both
    collects the misses and leaves a place for their ids, with no second pass to find or refill the missing
    positions. The slots are taken out of the cache (`take_pending`) before the misses are encoded."""

    def __init__(self, *args):
        super().__init__(*args)
        self.pending: dict[str, list[int]] = {}

    def __missing__(self, key: str) -> list[int]:
        self[key] = self.pending[key] = slot = []
        return slot

    def take_pending(self) -> dict[str, list[int]]:
        """The slots of the keys that missed since the last call, removed from the cache."""
        pending, self.pending = self.pending, {}
        deque(map(self.__delitem__, pending), maxlen=0)
        return pending


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
        if set(map(type, vocab.values())) - {bytes}:
            token_id, token = next((i, t) for i, t in vocab.items() if not isinstance(t, bytes))
            raise TypeError(f"vocab[{token_id!r}] must be bytes, got {type(token).__name__}")
        self.vocab: dict[int, bytes] = dict(zip(map(int, vocab), vocab.values(), strict=True))
        firsts = list(map(bytes, map(itemgetter(0), merges)))
        seconds = list(map(bytes, map(itemgetter(1), merges)))
        self.merges: list[tuple[bytes, bytes]] = list(zip(firsts, seconds, strict=True))
        ids_descending = sorted(self.vocab, reverse=True)  # duplicates: the lowest id is written last, and wins
        tokens_descending = list(map(self.vocab.__getitem__, ids_descending))
        self._token_to_id: dict[bytes, int] = dict(zip(tokens_descending, ids_descending, strict=True))

        # BPE works on ids: pair (a, b) -> (rank << shift) | merged_id in one int-keyed dict, so the lowest value
        # is the earliest merge and its low bits are the merged token's id.
        self._shift = max(max(self.vocab, default=0).bit_length(), 1)
        lookup = self._token_to_id.get
        a_ids, b_ids = list(map(lookup, firsts)), list(map(lookup, seconds))
        merged_ids = list(map(lookup, map(bytes.__add__, firsts, seconds)))
        if None in a_ids or None in b_ids or None in merged_ids:
            for rank, (a, b) in enumerate(self.merges):
                for part in (a, b, a + b):
                    if part not in self._token_to_id:
                        raise ValueError(f"merges[{rank}] = {(a, b)!r} needs {part!r}, which is not in vocab")
        keys = np.array(a_ids, dtype=np.int64) << self._shift | np.array(b_ids, dtype=np.int64)
        values = np.arange(len(merged_ids), dtype=np.int64) << self._shift | np.array(merged_ids, dtype=np.int64)
        # a pair listed twice: the first (lowest rank) is written last, and wins
        self._pair_table: dict[int, int] = dict(zip(keys[::-1].tolist(), values[::-1].tolist(), strict=True))
        self._byte_ids: list[int | None] = [self._token_to_id.get(bytes((b,))) for b in range(256)]
        # The same table as a numpy hash map, for `_bpe_bytes` (many pairs looked up at once).
        self._pair_map = IntMap(
            np.fromiter(self._pair_table.keys(), dtype=np.int64, count=len(self._pair_table)),
            np.fromiter(self._pair_table.values(), dtype=np.int64, count=len(self._pair_table)),
        )
        self._byte_ids_np = np.array([-1 if i is None else i for i in self._byte_ids], dtype=np.int64)
        # value of every byte pair (b0 << 8 | b1): the first round of BPE is a plain gather
        byte_ids = np.maximum(self._byte_ids_np, 0)
        self._byte_pair_values = self._pair_values_of(np.repeat(byte_ids, 256), np.tile(byte_ids, 256))

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
        self._specials = SpecialTokens(self.special_tokens)
        self._special_re = self._specials.regex
        self._special_bytes_re = self._specials.bytes_regex

        # One cache for pieces and pre-tokens alike: text -> ids of encoding that text on its own (a pre-token on
        # its own is still one pre-token, so both kinds of key mean the same thing).
        self._special_entries = {special: (token_id,) for special, token_id in self._special_ids.items()}
        self._cache = _Cache(self._special_entries)
        self._cache_size = cache_size
        # Long texts: pieces are looked up a block at a time in a numpy hash table (special tokens are entries).
        self._table = PieceTable(cache_size, [(s.encode("utf-8"), ids) for s, ids in self._special_entries.items()])
        self._pretoken_table = PieceTable(cache_size)

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
        # The cyclic garbage collector would rescan the large cache again and again while millions of lists and
        # tuples are made; nothing here forms a reference cycle, so it is paused (20-25% of a cold run).
        if self._cache.pending:  # slots left in the cache by an interrupted call (KeyboardInterrupt): drop them
            self._cache.take_pending()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._encode_array(text).tolist() if len(text) >= _TABLE_MIN_CHARS else self._encode(text)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _encode(self, text: str) -> list[int]:
        """Ids of a short text (under _TABLE_MIN_CHARS): its pieces through the dict cache, special tokens as their
        own cache keys (no ordinary piece can equal one: it would have been split off)."""
        parts = self._specials.split(text)  # [text, special, text, special, ..., text]
        if len(parts) == 1:
            return self._encode_pieces(PIECE_RE.findall(text))
        pieces: list[str] = []
        for i, part in enumerate(parts):
            if i % 2:
                pieces.append(part)
            elif part:
                pieces += PIECE_RE.findall(part)
        return self._encode_pieces(pieces)

    def encode_to_array(self, text: str) -> np.ndarray:
        """`encode` as a numpy int64 array (what the dataset CLI writes; no list of Python ints is made)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if len(text) < _TABLE_MIN_CHARS:
            return np.array(self.encode(text), dtype=np.int64)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._encode_array(text)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _encode_array(self, text: str) -> np.ndarray:
        """The numpy path: blocks of about _BLOCK_CHARS cut where encoding splits exactly (`find_safe_cut`)."""
        blocks = []
        start, n = 0, len(text)
        while n - start > _BLOCK_CHARS:
            end = start + _BLOCK_CHARS
            cut = self.find_safe_cut(text[start:end])
            while not cut and end < n:  # no safe cut in the window (a huge run without spaces): widen it
                end = min(n, start + 2 * (end - start))
                cut = self.find_safe_cut(text[start:end]) if end < n else n - start
            blocks.append(self._encode_block_array(text[start : start + cut]))
            start += cut
        blocks.append(self._encode_block_array(text[start:]))
        return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]

    def _encode_block_array(self, text: str) -> np.ndarray:
        """Ids of a block: its pieces found, hashed and looked up in the piece table with numpy; the pieces that
        miss are encoded by `_encode_new_pieces` (once per distinct piece) and added to the table."""
        raw = text.encode("utf-8")
        data = np.frombuffer(raw, dtype=np.uint8)
        n = data.size
        if not n:
            return np.zeros(0, dtype=np.int64)
        # Pieces start at byte 0 and where whitespace follows non-whitespace, and special tokens are pieces.
        ws = _WHITESPACE_MASK(data)
        flags = np.empty(n, dtype=bool)
        flags[0] = True
        np.greater(ws[1:], ws[:-1], out=flags[1:])
        if self._special_bytes_re is not None:
            spans = [m.span() for m in self._special_bytes_re.finditer(raw)]
            if spans:
                s, e = np.array(spans, dtype=np.int64).T
                inside = np.cumsum(np.bincount(s + 1, minlength=n + 1) - np.bincount(e, minlength=n + 1))[:n]
                flags &= inside == 0
                flags[s] = True
                flags[e[e < n]] = True
        starts = np.flatnonzero(flags)
        pieces = PieceWords(raw, starts, np.diff(np.append(starts, n)))
        ids, _ = cached_ids(self._table, pieces, lambda reps: self._encode_new_pieces(raw, ws, pieces, reps))
        return ids

    def _encode_new_pieces(
        self, raw: bytes, ws: np.ndarray, pieces: PieceWords, reps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, counts) of the pieces `reps` (indices into `pieces`, each encoded on its own), in that order.

        The pieces are pre-tokenized in three groups (ASCII pieces that start with whitespace and end with a
        non-space, joined and split by one stdlib-`re` findall; the same for non-ASCII ones with `regex`; the rest
        one by one), and the pre-tokens are looked up in the pre-token table (`cached_ids` again), with BPE
        (`_bpe_pieces`) for the new ones. Joining is exact because a non-space followed by whitespace is always a
        pre-token boundary.
        """
        starts, lengths = pieces.starts[reps], pieces.lengths[reps]
        joinable = ws[starts] & ~ws[starts + lengths - 1]
        ascii_ = pieces.is_ascii(reps)
        groups = [np.flatnonzero(joinable & ascii_), np.flatnonzero(joinable & ~ascii_), np.flatnonzero(~joinable)]
        order = np.concatenate(groups)  # positions in reps, in the order their pre-tokens are listed
        group_bytes = [raw_bytes_of(raw, starts[g], lengths[g]) for g in groups]
        pretokens = GPT2_ASCII_RE.findall(group_bytes[0].decode("ascii"))
        byte_lengths = list(map(len, pretokens))
        more = GPT2_RE.findall(group_bytes[1].decode("utf-8"))
        for a, m in zip(starts[groups[2]].tolist(), lengths[groups[2]].tolist(), strict=True):
            more += GPT2_RE.findall(raw[a : a + m].decode("utf-8"))
        pretokens += more
        byte_lengths += [len(t.encode("utf-8")) for t in more]
        plen = np.array(byte_lengths, dtype=np.int64)
        pw = PieceWords(b"".join(group_bytes), np.cumsum(plen) - plen, plen)
        ids, counts = cached_ids(self._pretoken_table, pw, lambda new: self._bpe_pieces(pw, new))
        # pre-token counts -> piece counts (the pre-tokens tile the pieces in `order`), then back to reps order
        last = np.searchsorted(np.cumsum(plen), np.cumsum(lengths[order]))  # index of each piece's last pre-token
        ends = np.cumsum(counts)[last]
        piece_counts = np.diff(np.concatenate(([0], ends)))
        rep_counts = np.empty(reps.size, dtype=np.int64)
        rep_counts[order] = piece_counts
        rep_start = np.empty(reps.size, dtype=np.int64)
        rep_start[order] = ends - piece_counts
        return ids[ragged_arange(rep_start, rep_counts)], rep_counts

    def _bpe_pieces(self, pw: PieceWords, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, counts): BPE of the pre-tokens `which` of `pw` (read from its bytes), in that order."""
        data = np.frombuffer(pw.raw, dtype=np.uint8)[ragged_arange(pw.starts[which], pw.lengths[which])]
        missing = self._byte_ids_np[data] < 0
        if missing.any():  # the error names the pre-token and the byte
            at = int(np.flatnonzero(missing)[0])
            word = int(np.searchsorted(np.cumsum(pw.lengths[which]), at, side="right"))
            start = int(pw.starts[which[word]])
            self._bpe(pw.raw[start : start + int(pw.lengths[which[word]])].decode("utf-8"))  # raises
        if which.size < _BATCH_BPE_MIN:
            spans = zip(pw.starts[which].tolist(), pw.lengths[which].tolist(), strict=True)
            results = [self._bpe_from_bytes(pw.raw[a : a + m]) for a, m in spans]
            counts = np.fromiter(map(len, results), dtype=np.int64, count=len(results))
            return np.fromiter(chain.from_iterable(results), dtype=np.int64, count=int(counts.sum())), counts
        return self._bpe_bytes(data, pw.lengths[which])

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
            cut = last_safe_cut(text, self._specials, searched)
            if cut > 0:
                yield from self.encode(text[:cut])
                text = text[cut:]
            # none found: search again when the buffer has doubled, only its new part (the last chars searched
            # could not be judged yet: they wait for what follows)
            want, searched = (
                (buffer_size, 0) if cut > 0 else (2 * len(text), max(0, len(text) - self._specials.max_len - 1))
            )
            pending = [text]
            pending_len = len(text)
        text = "".join(pending)
        if text:
            yield from self.encode(text)

    def find_safe_cut(self, text: str) -> int:
        """A position i where encode(text[:i] + rest) == encode(text[:i]) + encode(rest) for every `rest`, or 0
        (`pretokenize.last_safe_cut`: the last such cut of a few cheap kinds, not necessarily the largest)."""
        return last_safe_cut(text, self._specials)

    def _encode_pieces(self, pieces: list[str]) -> list[int]:
        """Pieces through the cache in one C pass (map(cache[...]), chain); misses are filled in afterwards."""
        cache = self._cache
        found = list(map(cache.__getitem__, pieces))  # a miss gives its piece's (empty) slot list: see _Cache
        if cache.pending:
            self._add_to_cache(cache.take_pending())
        return list(chain.from_iterable(found))

    def _add_to_cache(self, pending: dict[str, list[int]]) -> None:
        """Encode the pieces that missed the cache (`_pieces_ids`), cache them and fill their slot lists."""
        keys = list(pending)
        piece_ids = self._pieces_ids(keys)
        self._cache.update(zip(keys, piece_ids, strict=True))
        deque(map(list.extend, map(pending.__getitem__, keys), piece_ids), maxlen=0)

    def _pieces_ids(self, pieces: list[str]) -> list[tuple[int, ...]]:
        """The ids of each piece encoded on its own, in order, all in one batch; new pre-tokens are cached.

        Batching matters: a `regex` call costs microseconds, so the pieces are joined and pre-tokenized by one
        findall (by the stdlib `re` with an ASCII-only pattern for the ASCII pieces, which is 2-3x faster).
        Joining is exact for pieces that start with whitespace and end with a non-space (all but a text's first
        and last piece, and pieces next to a special token): a non-space followed by whitespace is always a
        pre-token boundary. The other pieces are pre-tokenized one by one.
        """
        cache = self._cache
        if len(cache) + len(pieces) > self._cache_size:
            cache.clear()  # bounded memory; the hot pieces come back within the next block
            cache.update(self._special_entries)
        ascii_joinable, other_joinable, others = [], [], []
        for i, piece in enumerate(pieces):
            if piece[0] not in _WHITESPACE_SET or piece[-1] in _WHITESPACE_SET:
                others.append(i)
            elif piece.isascii():
                ascii_joinable.append(i)
            else:
                other_joinable.append(i)
        # pre-tokens of the joined pieces, in order: ASCII pieces first, then the others (both tile their text)
        joinable = ascii_joinable + other_joinable
        joinable_pieces = [pieces[i] for i in joinable]
        pretokens = GPT2_ASCII_RE.findall("".join(joinable_pieces[: len(ascii_joinable)]))
        pretokens += GPT2_RE.findall("".join(joinable_pieces[len(ascii_joinable) :]))
        other_pretokens = [GPT2_RE.findall(pieces[i]) for i in others]
        new_pretokens = list(set(filterfalse(cache.__contains__, chain(pretokens, *other_pretokens))))
        if len(new_pretokens) >= _BATCH_BPE_MIN:
            cache.update(zip(new_pretokens, self._bpe_batch(new_pretokens), strict=True))
        else:
            for pretoken in new_pretokens:
                cache[pretoken] = self._bpe(pretoken)
        get = dict.__getitem__.__get__(cache)  # plain lookups: every pre-token is cached by now
        result: list = [None] * len(pieces)
        if joinable:
            grouped = self._group_pretoken_ids(list(map(get, pretokens)), list(map(len, pretokens)), joinable_pieces)
            deque(map(result.__setitem__, joinable, grouped), maxlen=0)
        for i, piece_pretokens in zip(others, other_pretokens, strict=True):
            result[i] = tuple(chain.from_iterable(map(get, piece_pretokens)))
        return result

    @staticmethod
    def _group_pretoken_ids(
        pretoken_ids: list[tuple[int, ...]], pretoken_lengths: list[int], pieces: list[str]
    ) -> list[tuple[int, ...]]:
        """Ids of each piece, given the ids of the pre-tokens that tile the joined pieces in order.

        Vectorized: the pre-tokens of each piece are found by position (cumsum, searchsorted), and the m-th
        pre-token of every piece with more than m is appended by one object-array addition (tuple concatenation
        in C). Most pieces have one or two pre-tokens (" the", " word."); the rare long ones are joined one by one.
        """
        token_ends = np.cumsum(np.array(pretoken_lengths, dtype=np.int64))
        piece_ends = np.cumsum(np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces)))
        hi = np.searchsorted(token_ends, piece_ends) + 1  # token_ends[hi - 1] == piece end
        lo = np.concatenate(([0], hi[:-1]))
        counts = hi - lo
        ids = np.fromiter(pretoken_ids, dtype=object, count=len(pretoken_ids))
        grouped = ids[lo]
        for m in range(1, min(int(counts.max()), _GROUP_ROUNDS)):
            sel = np.flatnonzero(counts > m)
            grouped[sel] = grouped[sel] + ids[lo[sel] + m]
        result = grouped.tolist()
        for i in np.flatnonzero(counts > _GROUP_ROUNDS).tolist():
            result[i] = tuple(chain.from_iterable(pretoken_ids[lo[i] : hi[i]]))
        return result

    def _bpe_batch(self, pretokens: list[str]) -> list[tuple[int, ...]]:
        """`_bpe` of each pre-token, computed together by `_bpe_bytes` (numpy)."""
        encoded = [p.encode("utf-8") for p in pretokens]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        if (self._byte_ids_np[data] < 0).any():
            return [self._bpe(p) for p in pretokens]  # raises the error naming the missing byte
        ids, counts = self._bpe_bytes(data, lengths)
        ends = np.cumsum(counts).tolist()
        flat = ids.tolist()
        return [tuple(flat[e - c : e]) for e, c in zip(ends, counts.tolist(), strict=True)]

    def _bpe_bytes(self, data: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, counts): BPE of the words data[...] of the given byte lengths (> 0), ids concatenated in order.

        Same result as `_bpe` word by word (one merge per word per round, the leftmost of the lowest value), but
        each round is vectorized over all unfinished words: for thousands of new words this is several times
        faster than the Python loop. Words leave the arrays as they finish; the last few finish in `_merge`.
        Every byte must have an id (checked by the caller).
        """
        num_words = lengths.size
        long = np.flatnonzero(lengths >= HEAP_MIN)
        if long.size:  # long words merge one by one (O(n log n) each); numpy rounds would take O(n) rounds
            return self._bpe_bytes_with_long(data, lengths, long)
        flat_bytes = data.astype(np.int64)
        ids = self._byte_ids_np[flat_bytes]
        word = np.repeat(np.arange(num_words, dtype=np.int64), lengths)
        mask = (1 << self._shift) - 1
        inf = np.iinfo(np.int64).max
        # values[i]: value of the pair (ids[i], ids[i + 1]); inf across words, for non-merges and at the end.
        values = np.full(ids.size, inf, dtype=np.int64)
        values[:-1] = self._byte_pair_values[(flat_bytes[:-1] << 8) | flat_bytes[1:]]
        values[np.flatnonzero(word[:-1] != word[1:])] = inf
        done_words, done_ids = [], []  # (word label per id, ids) of the words finished in each round
        while ids.size:
            starts = np.flatnonzero(np.concatenate(([True], word[1:] != word[:-1])))
            sizes = np.diff(np.append(starts, ids.size))
            word_min = np.minimum.reduceat(values, starts)
            done = word_min == inf
            if done.any():  # finished words leave the arrays
                finished = np.repeat(done, sizes)
                done_words.append(word[finished])
                done_ids.append(ids[finished])
                keep = ~finished
                ids, word, values = ids[keep], word[keep], values[keep]
                if not ids.size:
                    break
                word_min, starts, sizes = word_min[~done], None, sizes[~done]
                starts = np.cumsum(sizes) - sizes
            if starts.size <= _BATCH_BPE_TAIL:  # a few long words are left: a numpy round per merge costs more
                for w, part in zip(word[starts].tolist(), np.split(ids, starts[1:]), strict=True):
                    merged = self._merge(part.tolist())
                    done_words.append(np.full(len(merged), w, dtype=np.int64))
                    done_ids.append(np.array(merged, dtype=np.int64))
                break
            candidates = np.flatnonzero(values == np.repeat(word_min, sizes))
            cand_word = word[candidates]
            first = candidates[np.concatenate(([True], cand_word[1:] != cand_word[:-1]))]  # leftmost per word
            ids[first] = values[first] & mask
            keep = np.ones(ids.size, dtype=bool)
            keep[first + 1] = False
            ids, word, values = ids[keep], word[keep], values[keep]
            merged = first - np.arange(first.size)  # positions of the merged tokens after the deletions
            # Only the pairs next to a merged token change: (merged, right neighbour) and (left neighbour, merged).
            right = merged + 1
            has_right = right < ids.size
            has_right[has_right] = word[right[has_right]] == word[merged[has_right]]
            values[merged] = inf
            values[merged[has_right]] = self._pair_values_of(ids[merged[has_right]], ids[right[has_right]])
            left = merged - 1
            has_left = left >= 0
            has_left[has_left] = word[left[has_left]] == word[merged[has_left]]
            values[left[has_left]] = self._pair_values_of(ids[left[has_left]], ids[merged[has_left]])
        labels = np.concatenate(done_words) if done_words else np.zeros(0, dtype=np.int64)
        order = np.argsort(labels, kind="stable")  # each word's ids stay in order
        out = np.concatenate(done_ids)[order] if done_ids else np.zeros(0, dtype=np.int64)
        return out, np.bincount(labels, minlength=num_words)

    def _bpe_bytes_with_long(self, data: np.ndarray, lengths: np.ndarray, long: np.ndarray):
        """`_bpe_bytes` where the words `long` are merged one by one and the others together."""
        starts = np.cumsum(lengths) - lengths
        short = np.flatnonzero(lengths < HEAP_MIN)
        counts = np.zeros(lengths.size, dtype=np.int64)
        short_ids, counts[short] = self._bpe_bytes(data[ragged_arange(starts[short], lengths[short])], lengths[short])
        spans = zip(starts[long].tolist(), lengths[long].tolist(), strict=True)
        long_ids = [self._merge(self._byte_ids_np[data[a : a + m]]) for a, m in spans]
        counts[long] = list(map(len, long_ids))
        out_start = np.cumsum(counts) - counts
        out = np.empty(int(counts.sum()), dtype=np.int64)
        out[ragged_arange(out_start[short], counts[short])] = short_ids
        for w, ids in zip(long.tolist(), long_ids, strict=True):
            out[out_start[w] : out_start[w] + len(ids)] = ids
        return out, counts

    def _pair_values_of(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Vectorized `_pair_table.get((left << shift) | right, inf)`."""
        return self._pair_map.get((left << self._shift) | right, np.iinfo(np.int64).max)

    def _bpe(self, pretoken: str) -> tuple[int, ...]:
        """Rank-based BPE of one pre-token: merge the adjacent pair with the lowest merge rank until none is left.

        One occurrence at a time (the leftmost of the lowest rank), updating only its two neighbouring pair values.
        This equals merging every occurrence of the pair at once because a pair that contains the merged token can
        only have a later rank than the merge that made it (it is learned after the token exists).
        """
        return self._bpe_from_bytes(pretoken.encode("utf-8"))

    def _bpe_from_bytes(self, pretoken_bytes: bytes) -> tuple[int, ...]:
        if len(pretoken_bytes) >= HEAP_MIN:  # an array: no Python int per byte of a long pre-token
            parts = self._byte_ids_np[np.frombuffer(pretoken_bytes, dtype=np.uint8)]
            if parts.min() >= 0:
                return self._merge(parts)
        parts = list(map(self._byte_ids.__getitem__, pretoken_bytes))
        if None in parts:
            pretoken = pretoken_bytes.decode("utf-8", errors="replace")
            missing = pretoken_bytes[parts.index(None)]
            raise ValueError(
                f"cannot encode {pretoken!r}: byte {bytes((missing,))!r} is not in the vocabulary "
                "(a byte-level vocab needs all 256 single bytes)"
            )
        return self._merge(parts)

    def _merge(self, parts) -> tuple[int, ...]:
        """BPE of a list (modified in place) or int64 array of token ids (`_bpe` after bytes are mapped to ids)."""
        return merge(parts, self._pair_table, self._shift, self._pair_map)

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
