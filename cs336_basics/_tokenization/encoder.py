"""The tokenizer's encoding engine: text -> ids with bounded caches, exact to GPT-2's (and tiktoken's) encoding.

Contract: `Encoder.encode(text)` equals the plain reference `tokenizer_reference.encode` (special tokens split
off longest first, GPT-2 pre-tokens, BPE of each); checked by tests/test_tokenizer.py and test_tokenizer_table.py
against tiktoken (GPT-2, and vocabularies we trained) and the reference, on fixed cases and Hypothesis text.

How it is fast (in Python and numpy, with C kernels, `_tokenization/encode_kernel.c`, for the new pieces of a
block and for pre-tokens of 1,000+ bytes; without a C compiler, Python and numpy do that too):

1. The text is cut into *pieces* (`pretokenize.PIECE_RE`: a whitespace run then a non-whitespace run), which
   pre-tokenize independently; English text has few distinct pieces (" the", " world."), so caching piece -> ids
   does most of the work. Special tokens are pieces of their own.
2. Short texts (under _TABLE_MIN_CHARS) take a dict cache: `map(cache.__getitem__, pieces)` and
   `chain.from_iterable` (all C); a miss returns an empty slot list that stays in place in the output and is
   filled afterwards (`_Cache`), all misses of a call encoded in one batch.
3. Long texts (what `encode_iterable` and the dataset command see) go in blocks of about _BLOCK_CHARS through a
   numpy hash table (`chunk_table.PieceTable`): a block's UTF-8 bytes are cut into pieces, hashed and looked up
   all at once, every hit verified against the stored bytes. Missing ASCII pieces are pre-tokenized and merged in
   one C call (`Merges.bpe_ascii_pieces`); the others are pre-tokenized together (one `re` findall over the joined
   ASCII pieces, `regex` for the rest), their pre-tokens looked up in a second table, and only new pre-tokens run
   BPE (`encode_kernel.Merges.bpe_bytes`: one C call, else numpy rounds; O(n log n) per long word).

4. Pieces and pre-tokens of _HUGE_BYTES or more (runs without spaces: pathological text) skip the caches, and such a
   pre-token goes to the kernel with no other copy of it held (`_encode_huge_piece`).

Cache policy, one for all three caches (the dict, the piece table, the pre-token table): at most `cache_size`
entries each, cleared when full, so encoding an arbitrarily large stream holds bounded memory.
"""

import codecs
import contextlib
import gc
from collections import deque
from itertools import chain, filterfalse

import numpy as np

from cs336_basics._tokenization.chunk_table import PieceTable, PieceWords, WhitespaceMask, cached_ids, ragged_arange
from cs336_basics._tokenization.encode_kernel import HEAP_MIN, Merges, batch_kernel
from cs336_basics.pretokenize import (
    GPT2_ASCII_RE,
    GPT2_RE,
    PIECE_RE,
    WHITESPACE_CHARS,
    SpecialTokens,
    last_safe_cut,
)

_WHITESPACE_SET = frozenset(WHITESPACE_CHARS)
_WHITESPACE_MASK = WhitespaceMask(WHITESPACE_CHARS)
_GROUP_ROUNDS = 8  # pieces with up to this many pre-tokens get their ids by vectorized concatenation
_BATCH_BPE_MIN = 256  # new pre-tokens in one block from which numpy batch BPE beats the per-word loop
_TABLE_MIN_CHARS = 4096  # texts at least this long go through the numpy piece table (see chunk_table)
_BLOCK_CHARS = 1 << 20  # encode long texts in blocks of about this many chars: bounded lists, a meaningful cache bound
# Pieces and pre-tokens of at least this many bytes (a run without spaces: only pathological text) skip the caches,
# and a pre-token that long goes to the BPE kernel with no other copy of it held (see `_encode_huge_piece`).
_HUGE_BYTES = 1 << 20

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


@contextlib.contextmanager
def _gc_paused():
    """The cyclic garbage collector would rescan the large caches again and again while millions of lists and
    tuples are made; nothing here forms a reference cycle, so it is paused while encoding (20-25% of a cold run)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Encoder:
    """Text -> ids for one vocabulary: `merges` (its BPE tables), `special_ids` (special token -> id), with caches
    of at most `cache_size` entries each."""

    def __init__(self, merges: Merges, special_ids: dict[str, int], cache_size: int):
        self.merges = merges
        self.specials = SpecialTokens(list(special_ids))
        # One dict cache for pieces and pre-tokens alike: text -> ids of encoding that text on its own (a pre-token
        # on its own is still one pre-token, so both kinds of key mean the same thing).
        self.special_entries = {special: (token_id,) for special, token_id in special_ids.items()}
        self.cache = _Cache(self.special_entries)
        self.cache_size = cache_size
        # Long texts: pieces are looked up a block at a time in a numpy hash table (special tokens are entries).
        self.table = PieceTable(cache_size, [(s.encode("utf-8"), ids) for s, ids in self.special_entries.items()])
        self.pretoken_table = PieceTable(cache_size)

    def encode(self, text: str) -> list[int]:
        """str -> token ids (see the module docstring)."""
        if self.cache.pending:  # slots left in the cache by an interrupted call (KeyboardInterrupt): drop them
            self.cache.take_pending()
        with _gc_paused():
            return self.encode_long(text).tolist() if len(text) >= _TABLE_MIN_CHARS else self.encode_short(text)

    def encode_to_array(self, text: str, dtype=np.int64) -> np.ndarray:
        """`encode` as a numpy array of `dtype` (no list of Python ints is made for long texts; each block's ids
        are converted as they come, so a long text's ids are never all held as int64)."""
        if len(text) < _TABLE_MIN_CHARS:
            return np.array(self.encode(text), dtype=dtype)
        with _gc_paused():
            return self.encode_long(text, dtype)

    def encode_short(self, text: str) -> list[int]:
        """Ids of a short text (under _TABLE_MIN_CHARS): its pieces through the dict cache, special tokens as their
        own cache keys (no ordinary piece can equal one: it would have been split off)."""
        parts = self.specials.split(text)  # [text, special, text, special, ..., text]
        if len(parts) == 1:
            return self._encode_pieces(PIECE_RE.findall(text))
        pieces: list[str] = []
        for i, part in enumerate(parts):
            if i % 2:
                pieces.append(part)
            elif part:
                pieces += PIECE_RE.findall(part)
        return self._encode_pieces(pieces)

    def encode_long(self, text: str, dtype=np.int64) -> np.ndarray:
        """The numpy path: blocks of about _BLOCK_CHARS cut where encoding splits exactly (`find_safe_cut`)."""
        blocks = []
        start, n = 0, len(text)
        while n - start > _BLOCK_CHARS:
            end = start + _BLOCK_CHARS
            cut = last_safe_cut(text[start:end], self.specials)
            while not cut and end < n:  # no safe cut in the window (a huge run without spaces): widen it
                searched = max(0, end - start - self.specials.max_len - 1)  # (search only the new part)
                end = min(n, start + 2 * (end - start))
                cut = last_safe_cut(text[start:end], self.specials, searched) if end < n else n - start
            blocks.append(self._encode_block_array(text[start : start + cut]).astype(dtype, copy=False))
            start += cut
        blocks.append(self._encode_block_array(text[start:]).astype(dtype, copy=False))
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
        if self.specials.bytes_regex is not None:
            spans = [m.span() for m in self.specials.bytes_regex.finditer(raw)]
            if spans:
                s, e = np.array(spans, dtype=np.int64).T
                inside = np.cumsum(np.bincount(s + 1, minlength=n + 1) - np.bincount(e, minlength=n + 1))[:n]
                flags &= inside == 0
                flags[s] = True
                flags[e[e < n]] = True
        starts = np.flatnonzero(flags)
        del flags
        lengths = np.diff(np.append(starts, n))
        huge = np.flatnonzero(lengths >= _HUGE_BYTES)
        if not huge.size:
            pieces = PieceWords(raw, starts, lengths)
            ids, _ = cached_ids(self.table, pieces, lambda reps: self._encode_new_pieces(raw, ws, pieces, reps))
            return ids
        # Huge pieces (runs without spaces) are encoded one by one, uncached, after the others (whose arrays are
        # freed first): a huge run's memory is then its text, its bytes and the kernel's arrays, little more.
        small = np.flatnonzero(lengths < _HUGE_BYTES)
        ids, counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if small.size:
            pieces = PieceWords(raw, starts[small], lengths[small])
            ids, counts = cached_ids(self.table, pieces, lambda reps: self._encode_new_pieces(raw, ws, pieces, reps))
            del pieces
        ws = data = None  # (freed before the huge pieces are encoded)
        id_ends = np.concatenate(([0], np.cumsum(counts)))[huge - np.arange(huge.size)].tolist()  # ids before each
        out, done = [], 0
        for end, a, m in zip(id_ends, starts[huge].tolist(), lengths[huge].tolist(), strict=True):
            out += [ids[done:end], self._encode_huge_piece(raw, a, m)]
            done = end
        out.append(ids[done:])
        return np.concatenate(out)

    def _encode_huge_piece(self, raw: bytes, start: int, length: int) -> np.ndarray:
        """Ids of the piece raw[start : start + length], of _HUGE_BYTES or more. Its pre-tokens go through the
        pre-token table in batches of about _HUGE_BYTES, except those of _HUGE_BYTES or more, which go to
        `Merges.merge_array` as int32 byte ids with no other copy of the pre-token left (the kernel works in place,
        with a heap of local minima only: see _tokenization/encode_kernel.c)."""
        pretokens = GPT2_RE.findall(codecs.decode(memoryview(raw)[start : start + length], "utf-8"))
        out, batch, batch_bytes = [], [], 0
        for i in range(len(pretokens)):
            token = pretokens[i].encode("utf-8")
            pretokens[i] = None  # (the str of a huge pre-token is freed before its ids are made)
            if len(token) < _HUGE_BYTES:
                batch.append(token)
                batch_bytes += len(token)
                if batch_bytes < _HUGE_BYTES:
                    continue
            if batch:
                out.append(self._pretokens_ids(batch))
                batch, batch_bytes = [], 0
            if len(token) >= _HUGE_BYTES:
                data = np.frombuffer(token, dtype=np.uint8)
                if self.merges.byte_missing[data].any():
                    self.merges.bpe_from_bytes(token)  # raises the error naming the byte
                ids = self.merges.byte_ids_i32[data]
                del data, token
                out.append(self.merges.merge_array(ids))
                del ids
        if batch:
            out.append(self._pretokens_ids(batch))
        return np.concatenate(out).astype(np.int64, copy=False) if out else np.zeros(0, dtype=np.int64)

    def _pretokens_ids(self, pretokens: list[bytes]) -> np.ndarray:
        """The ids of the pre-tokens (UTF-8 bytes), concatenated: through the pre-token table, BPE for new ones."""
        plen = np.fromiter(map(len, pretokens), dtype=np.int64, count=len(pretokens))
        pw = PieceWords(b"".join(pretokens), np.cumsum(plen) - plen, plen)
        return cached_ids(self.pretoken_table, pw, lambda new: self._bpe_pieces(pw, new))[0]

    def _encode_new_pieces(
        self, raw: bytes, ws: np.ndarray, pieces: PieceWords, reps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, counts) of the pieces `reps` (indices into `pieces`, each encoded on its own), in that order.

        With the C batch kernel, the ASCII pieces (nearly all, in English) are pre-tokenized and merged in one C call
        (`Merges.bpe_ascii_pieces`: no Python object per piece or pre-token, no pre-token table), and the others take
        `_encode_new_pieces_re`; without it, all do."""
        if batch_kernel() is None:
            return self._encode_new_pieces_re(raw, ws, pieces, reps)
        ascii_ = pieces.is_ascii(reps)
        fast = np.flatnonzero(ascii_)
        data = np.frombuffer(raw, dtype=np.uint8)[ragged_arange(pieces.starts[reps[fast]], pieces.lengths[reps[fast]])]
        if self.merges.byte_missing[data].any():  # (a vocabulary without some byte: the other path names it)
            return self._encode_new_pieces_re(raw, ws, pieces, reps)
        fast_ids, fast_counts = self.merges.bpe_ascii_pieces(data, pieces.lengths[reps[fast]])
        if fast.size == reps.size:
            return fast_ids, fast_counts
        slow = np.flatnonzero(~ascii_)
        slow_ids, slow_counts = self._encode_new_pieces_re(raw, ws, pieces, reps[slow])
        counts = np.empty(reps.size, dtype=np.int64)
        counts[fast], counts[slow] = fast_counts, slow_counts
        starts = np.cumsum(counts) - counts
        ids = np.empty(int(counts.sum()), dtype=np.int64)
        ids[ragged_arange(starts[fast], fast_counts)] = fast_ids
        ids[ragged_arange(starts[slow], slow_counts)] = slow_ids
        return ids, counts

    def _encode_new_pieces_re(
        self, raw: bytes, ws: np.ndarray, pieces: PieceWords, reps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """`_encode_new_pieces` in Python and numpy (any pieces).

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
        ids, counts = cached_ids(self.pretoken_table, pw, lambda new: self._bpe_pieces(pw, new))
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
        missing = self.merges.byte_missing[data]
        if missing.any():  # the error names the pre-token and the byte
            at = int(np.flatnonzero(missing)[0])
            word = int(np.searchsorted(np.cumsum(pw.lengths[which]), at, side="right"))
            start = int(pw.starts[which[word]])
            self.merges.bpe(pw.raw[start : start + int(pw.lengths[which[word]])].decode("utf-8"))  # raises
        small = which.size < _BATCH_BPE_MIN and pw.lengths[which].max() < HEAP_MIN  # (long ones: arrays, below)
        if small and batch_kernel() is None:  # (the C kernel takes any batch)
            spans = zip(pw.starts[which].tolist(), pw.lengths[which].tolist(), strict=True)
            results = [self.merges.bpe_from_bytes(pw.raw[a : a + m]) for a, m in spans]
            counts = np.fromiter(map(len, results), dtype=np.int64, count=len(results))
            return np.fromiter(chain.from_iterable(results), dtype=np.int64, count=int(counts.sum())), counts
        return self.merges.bpe_bytes(data, pw.lengths[which])

    def _encode_pieces(self, pieces: list[str]) -> list[int]:
        """Pieces through the cache in one C pass (map(cache[...]), chain); misses are filled in afterwards."""
        cache = self.cache
        found = list(map(cache.__getitem__, pieces))  # a miss gives its piece's (empty) slot list: see _Cache
        if cache.pending:
            self._add_to_cache(cache.take_pending())
        return list(chain.from_iterable(found))

    def _add_to_cache(self, pending: dict[str, list[int]]) -> None:
        """Encode the pieces that missed the cache (`_pieces_ids`), cache them and fill their slot lists."""
        keys = list(pending)
        piece_ids = self._pieces_ids(keys)
        self.cache.update(zip(keys, piece_ids, strict=True))
        deque(map(list.extend, map(pending.__getitem__, keys), piece_ids), maxlen=0)

    def _pieces_ids(self, pieces: list[str]) -> list[tuple[int, ...]]:
        """The ids of each piece encoded on its own, in order, all in one batch; new pre-tokens are cached.

        Batching matters: a `regex` call costs microseconds, so the pieces are joined and pre-tokenized by one
        findall (by the stdlib `re` with an ASCII-only pattern for the ASCII pieces, which is 2-3x faster).
        Joining is exact for pieces that start with whitespace and end with a non-space (all but a text's first
        and last piece, and pieces next to a special token): a non-space followed by whitespace is always a
        pre-token boundary. The other pieces are pre-tokenized one by one.
        """
        cache = self.cache
        if len(cache) + len(pieces) > self.cache_size:
            cache.clear()  # bounded memory; the hot pieces come back within the next block
            cache.update(self.special_entries)
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
            cache.update(zip(new_pretokens, self.merges.bpe_batch(new_pretokens), strict=True))
        else:
            for pretoken in new_pretokens:
                cache[pretoken] = self.merges.bpe(pretoken)
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
