"""A piece -> token ids cache that looks up a whole block of text at once, in numpy (the tokenizer's fast path).

The tokenizer cuts text into *pieces* (a whitespace run followed by a non-whitespace run) that encode
independently. For long texts, the Python-level work per piece (making a str, hashing it, a dict lookup, chaining
its ids) is most of the cost, so here it is done for all pieces of a block with array operations on the UTF-8
bytes:

1. `WhitespaceMask`: which bytes belong to whitespace characters; a piece starts where whitespace follows
   non-whitespace (the tokenizer adds special-token boundaries).
2. `PieceWords`: each piece's first 8 bytes as one little-endian uint64 (its "head", read by one gather from an
   unaligned uint64 view of the bytes, the bytes past the piece's end zeroed), the rest of a longer piece as tail
   words the same way, and a 64-bit hash mixed from the words and the length. Most pieces are one word.
3. `PieceTable.lookup`: open addressing with linear probing, all queries probing in lockstep (`probe`); every hit
   is then compared with the stored key (length, head, tail words), so a hash collision can never give wrong ids
   (a colliding piece is a miss, and a key whose hash is already taken is simply not cached).
4. `PieceTable.gather`: the ids of every piece, concatenated, by one fancy-indexing gather.

Keys and ids live in flat arrays addressed by per-entry offsets; the table is cleared when it would exceed its
capacity, so memory stays bounded.
"""

from itertools import chain

import numpy as np

_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xBF58476D1CE4E5B9)
_K3 = np.uint64(0x94D049BB133111EB)
_TAIL_MASKS = np.array([(1 << (8 * r)) - 1 if r else (1 << 64) - 1 for r in range(8)], dtype=np.uint64)


class WhitespaceMask:
    """Marks the bytes of UTF-8 text that belong to whitespace characters (`chars`), vectorized, exact for valid
    UTF-8: ASCII ones by comparisons, multi-byte ones by the code of the (up to 3-byte) sequence at each lead byte.
    """

    def __init__(self, chars: str):
        encoded = [ch.encode("utf-8") for ch in chars]
        self.ascii = sorted(e[0] for e in encoded if len(e) == 1)
        if any(len(e) > 3 for e in encoded):
            raise ValueError("whitespace characters must encode to at most 3 bytes")
        multi = [e for e in encoded if len(e) > 1]
        self.leads = sorted({e[0] for e in multi})
        self.codes = {n: np.array(sorted(int.from_bytes(e, "big") for e in multi if len(e) == n)) for n in (2, 3)}

    def __call__(self, data: np.ndarray) -> np.ndarray:
        mask = np.zeros(data.size, dtype=bool)
        for runs in _runs(self.ascii):  # [9..13], [32]: one or two comparisons each
            mask |= (data >= runs[0]) & (data <= runs[-1]) if len(runs) > 1 else data == runs[0]
        lead = np.zeros(data.size, dtype=bool)
        for runs in _runs(self.leads):
            lead |= (data >= runs[0]) & (data <= runs[-1]) if len(runs) > 1 else data == runs[0]
        at = np.flatnonzero(lead)
        if at.size:
            padded = np.concatenate((data, np.zeros(2, dtype=np.uint8))).astype(np.int64)
            code2 = (padded[at] << 8) | padded[at + 1]
            code3 = (code2 << 8) | padded[at + 2]
            for n, code in ((2, code2), (3, code3)):
                if self.codes[n].size:
                    where = np.minimum(np.searchsorted(self.codes[n], code), self.codes[n].size - 1)
                    hit = at[self.codes[n][where] == code]
                    for k in range(n):
                        mask[hit + k] = True
        return mask


def _runs(values: list[int]) -> list[list[int]]:
    """Sorted values grouped into runs of consecutive integers: [9, 10, 11, 32] -> [[9, 10, 11], [32]]."""
    runs: list[list[int]] = []
    for v in values:
        if runs and runs[-1][-1] == v - 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs


def ragged_arange(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concatenate(arange(s, s + n) for s, n in zip(starts, lengths)), vectorized. lengths must be >= 0."""
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(total, dtype=np.int64)


def segment_any(flags: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """any(flags[a : a + counts[i]]) for consecutive segments of lengths `counts` (which may be 0)."""
    total = np.zeros(flags.size + 1, dtype=np.int64)
    np.cumsum(flags, out=total[1:])
    ends = np.cumsum(counts)
    return total[ends] > total[ends - counts]


def probe(slots: np.ndarray, keys: np.ndarray, pos: np.ndarray, mask: int, empty_column: int, default: int):
    """Open-addressing lookup of many keys at once: `slots` rows are (key, value), a row whose `empty_column` is
    negative is empty; `pos` holds each key's home slot (it is advanced in place). All keys probe in lockstep, one
    gather of whole rows per round (np.take: 8x faster than fancy indexing of a 2-D array); a key stops at its
    own row (its value) or at an empty row (`default`)."""
    rows = np.take(slots, pos, axis=0)
    out = np.where(rows[:, 0] == keys, rows[:, 1], default)
    todo = np.flatnonzero((rows[:, 0] != keys) & (rows[:, empty_column] >= 0))  # another key's row: probe on
    while todo.size:
        pos[todo] = (pos[todo] + 1) & mask
        rows = np.take(slots, pos[todo], axis=0)
        hit = rows[:, 0] == keys[todo]
        out[todo[hit]] = rows[hit, 1]
        todo = todo[~hit & (rows[:, empty_column] >= 0)]
    return out


class PieceWords:
    """The pieces raw[starts[i] : starts[i] + lengths[i]] of a block of UTF-8 bytes, as 8-byte words.

    head[i] is piece i's first 8 bytes as a little-endian uint64, zero past its end; a piece longer than 8 bytes
    also has tail words (its bytes from offset 8 on, the same way), found through `tail_words_of`. Two pieces are
    equal exactly when their lengths, heads and tails are. hashes[i] mixes piece i's words and length.
    """

    def __init__(self, raw: bytes, starts: np.ndarray, lengths: np.ndarray):
        self.raw, self.starts, self.lengths = raw, starts, lengths
        padded = np.frombuffer(raw + bytes(8), dtype=np.uint8)
        self._view = np.ndarray((len(raw) + 1,), dtype="<u8", buffer=padded, strides=(1,))  # [i]: bytes i..i+7
        self.head = self._view[starts] & _TAIL_MASKS[np.minimum(lengths, 8) & 7]
        hashes = self.head * _K2
        hashes ^= hashes >> np.uint64(31)
        self.long = np.flatnonzero(lengths > 8)
        if self.long.size:
            words = self.tail_words_of(self.long)
            counts = (lengths[self.long] - 1) >> 3
            within = np.arange(words.size, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
            mixed = (words ^ ((within.astype(np.uint64) + np.uint64(1)) * _K1)) * _K2
            mixed ^= mixed >> np.uint64(31)
            hashes[self.long] ^= np.bitwise_xor.reduceat(mixed, np.cumsum(counts) - counts)
        hashes ^= lengths.astype(np.uint64)
        hashes *= _K3
        hashes ^= hashes >> np.uint64(29)
        self.hashes = hashes

    def tail_words_of(self, pieces: np.ndarray) -> np.ndarray:
        """The tail words (bytes 8.. as 8-byte words, zero-padded) of `pieces`, which must all be > 8 bytes."""
        lengths = self.lengths[pieces]
        counts = (lengths - 1) >> 3
        ends = np.cumsum(counts)
        offsets = np.arange(int(ends[-1]) if ends.size else 0, dtype=np.int64)
        offsets -= np.repeat(ends - counts, counts)
        words = self._view[np.repeat(self.starts[pieces] + 8, counts) + (offsets << 3)]
        if words.size:
            words[ends - 1] &= _TAIL_MASKS[lengths & 7]
        return words

    def is_ascii(self, pieces: np.ndarray) -> np.ndarray:
        """bool per piece in `pieces`: are all its bytes < 0x80?"""
        high = np.uint64(0x8080808080808080)
        ascii_ = (self.head[pieces] & high) == 0
        long = np.flatnonzero(self.lengths[pieces] > 8)
        if long.size:
            counts = (self.lengths[pieces[long]] - 1) >> 3
            ascii_[long] &= ~segment_any((self.tail_words_of(pieces[long]) & high) != 0, counts)
        return ascii_

    def equal(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """bool per pair: is piece a[i] equal to piece b[i]?"""
        same = (self.lengths[a] == self.lengths[b]) & (self.head[a] == self.head[b])
        long = np.flatnonzero(same & (self.lengths[a] > 8))
        if long.size:
            counts = (self.lengths[a[long]] - 1) >> 3
            differs = self.tail_words_of(a[long]) != self.tail_words_of(b[long])
            same[long] = ~segment_any(differs, counts)
        return same

    def distinct(self, which: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Distinct pieces among `which`: (reps, index, k) with which[i] equal to reps[index[i]]; reps[:k] have
        distinct hashes (one per hash), and reps[k:] are pieces that share a hash with a different piece."""
        _, first, index = np.unique(self.hashes[which], return_index=True, return_inverse=True)
        index = index.reshape(-1)
        reps = which[first]
        others = np.flatnonzero(which != reps[index])  # occurrences after the first of their hash: compare
        if others.size:
            collided = others[~self.equal(which[others], reps[index[others]])]
            if collided.size:  # (never seen in practice) each becomes its own representative
                index[collided] = reps.size + np.arange(collided.size)
                return np.concatenate((reps, which[collided])), index, reps.size
        return reps, index, reps.size


def cached_ids(table: "PieceTable", pieces: PieceWords, encode_new) -> tuple[np.ndarray, np.ndarray]:
    """(ids, counts): the ids of every piece concatenated in order, and how many each has. Pieces found in `table`
    take their cached ids; the others are encoded once per distinct piece by `encode_new(reps)` -> (ids, counts)
    (reps: piece indices) and added to the table."""
    entries = table.lookup(pieces)
    miss = np.flatnonzero(entries < 0)
    if miss.size:
        reps, index, distinct_hashes = pieces.distinct(miss)
        rep_ids, rep_counts = encode_new(reps)
        keep = reps[:distinct_hashes]
        keep_ids, keep_counts = rep_ids[: int(rep_counts[:distinct_hashes].sum())], rep_counts[:distinct_hashes]
        if table.has_room(pieces, keep):  # the usual case: insert, then one gather for all pieces
            placed = table.insert(pieces, keep, keep_ids, keep_counts)
            if distinct_hashes == reps.size:  # (else some pieces collided with another's hash: assemble below)
                entries[miss] = placed[index]
                return table.gather(entries), table.id_counts(entries)
        # A clearing insert, or pieces the table would not take: assemble from the hits and the new ids.
        hit = np.flatnonzero(entries >= 0)
        counts = np.zeros(entries.size, dtype=np.int64)
        counts[hit] = table.id_counts(entries[hit])
        hit_ids = table.gather(entries[hit])
        counts[miss] = rep_counts[index]
        out_start = np.cumsum(counts) - counts
        out = np.empty(int(counts.sum()), dtype=np.int64)
        out[ragged_arange(out_start[hit], counts[hit])] = hit_ids
        rep_start = np.cumsum(rep_counts) - rep_counts
        out[ragged_arange(out_start[miss], counts[miss])] = rep_ids[ragged_arange(rep_start[index], rep_counts[index])]
        if not table.has_room(pieces, keep):
            table.insert(pieces, keep, keep_ids, keep_counts)  # clears the table first (its hits are gathered)
        return out, counts
    return table.gather(entries), table.id_counts(entries)


class PieceTable:
    """Open-addressing hash table: piece bytes -> token ids, built and queried with numpy, bounded in size.

    max_entries: the table is cleared when it would hold more entries (or more than 4 tail words per entry).
    fixed: (key bytes, ids) entries put back after every clear (the special tokens).
    """

    def __init__(self, max_entries: int, fixed: list[tuple[bytes, tuple[int, ...]]] = ()):
        self.max_entries = max(int(max_entries), len(fixed) + 1)  # the fixed entries always fit
        self.max_tail_words = 4 * self.max_entries + sum(len(key) for key, _ in fixed)
        self._fixed = list(fixed)
        self.clear()

    def clear(self) -> None:
        self.size = 0
        self._bits = 10
        self._slots = self._empty_slots()
        self._hash = np.zeros(256, dtype=np.uint64)  # per entry: its hash (for rehashing on growth)
        self._key_len = np.zeros(256, dtype=np.int64)  # per entry: its length in bytes
        self._key_head = np.zeros(256, dtype=np.uint64)  # per entry: its first 8 bytes (see PieceWords)
        self._tail_start = np.zeros(256, dtype=np.int64)  # per entry: where its tail words are in _tail_words
        self._id_start = np.zeros(256, dtype=np.int64)  # per entry: where its ids are in _ids
        self._id_len = np.zeros(256, dtype=np.int64)
        self._tail_words = np.zeros(1 << 10, dtype=np.uint64)
        self._ids = np.zeros(1 << 12, dtype=np.int64)
        self._tail_used = self._ids_used = 0
        if self._fixed:
            raw = b"".join(key for key, _ in self._fixed)
            lengths = np.array([len(key) for key, _ in self._fixed], dtype=np.int64)
            pieces = PieceWords(raw, np.cumsum(lengths) - lengths, lengths)
            ids = [ids for _, ids in self._fixed]
            flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64)
            self.insert(pieces, np.arange(lengths.size), flat, np.array(list(map(len, ids)), dtype=np.int64))

    # ------------------------------------------------------------------------------------------------- lookup

    def lookup(self, pieces: PieceWords) -> np.ndarray:
        """Entry index of every piece, -1 where it is not cached. Hits are verified against the stored key (length,
        head and tail words), so a hash collision is a miss, never wrong ids."""
        hashes = pieces.hashes.view(np.int64)
        mask = (1 << self._bits) - 1
        entries = probe(self._slots, hashes, hashes & mask, mask, empty_column=1, default=-1)
        entry = np.maximum(entries, 0)  # misses compare with entry 0; they stay misses
        good = (self._key_len[entry] == pieces.lengths) & (self._key_head[entry] == pieces.head)
        long = pieces.long[good[pieces.long]]
        if long.size:
            counts = (pieces.lengths[long] - 1) >> 3
            stored = self._tail_words[ragged_arange(self._tail_start[entry[long]], counts)]
            good[long] = ~segment_any(pieces.tail_words_of(long) != stored, counts)
        entries[~good] = -1
        return entries

    def id_counts(self, entries: np.ndarray) -> np.ndarray:
        return self._id_len[entries]

    def gather(self, entries: np.ndarray) -> np.ndarray:
        """The ids of the given entries, concatenated in order (int64)."""
        return np.take(self._ids, ragged_arange(self._id_start[entries], self._id_len[entries]))

    @staticmethod
    def _tail_counts(pieces: PieceWords, which: np.ndarray) -> np.ndarray:
        lengths = pieces.lengths[which]
        return np.where(lengths > 8, (lengths - 1) >> 3, 0)

    def has_room(self, pieces: PieceWords, which: np.ndarray) -> bool:
        """Whether `insert(pieces, which, ...)` fits without clearing the table."""
        return (
            self.size + which.size <= self.max_entries
            and self._tail_used + int(self._tail_counts(pieces, which).sum()) <= self.max_tail_words
        )

    def insert(self, pieces: PieceWords, which: np.ndarray, flat_ids: np.ndarray, id_lengths: np.ndarray) -> np.ndarray:
        """Add the pieces `which`, whose ids are the next id_lengths[i] of flat_ids; their hashes must be distinct.
        Returns their entry indices (all -1 when they do not fit even an empty table), which `gather` reads. A key
        whose hash another key already holds gets an entry but no slot: `lookup` never finds it (a miss), while its
        entry still holds its own ids. When the new keys do not fit, the table is cleared first."""
        count = which.size
        lengths = pieces.lengths[which]
        tail_counts = self._tail_counts(pieces, which)
        tail_words = int(tail_counts.sum())
        if not self.has_room(pieces, which):
            self.clear()
            if not self.has_room(pieces, which):
                return np.full(count, -1, dtype=np.int64)
        first, new = self.size, slice(self.size, self.size + count)
        self._reserve(count, tail_words, flat_ids.size)
        self._hash[new] = pieces.hashes[which]
        self._key_len[new] = lengths
        self._key_head[new] = pieces.head[which]
        self._tail_start[new] = self._tail_used + np.cumsum(tail_counts) - tail_counts
        self._tail_words[self._tail_used : self._tail_used + tail_words] = pieces.tail_words_of(which[lengths > 8])
        self._tail_used += tail_words
        self._id_start[new] = self._ids_used + np.cumsum(id_lengths) - id_lengths
        self._id_len[new] = id_lengths
        self._ids[self._ids_used : self._ids_used + flat_ids.size] = flat_ids
        self._ids_used += flat_ids.size
        self.size += count
        if self.size * 2 > len(self._slots):
            self._rehash()
        else:
            self._place(np.arange(first, first + count))
        return np.arange(first, first + count)

    def _reserve(self, entries: int, tail_words: int, ids: int) -> None:
        def grown(array, needed):
            if needed <= array.size:
                return array
            bigger = np.zeros(max(needed, 2 * array.size), dtype=array.dtype)
            bigger[: array.size] = array
            return bigger

        need = self.size + entries
        per_entry = (self._hash, self._key_len, self._key_head, self._tail_start, self._id_start, self._id_len)
        self._hash, self._key_len, self._key_head, self._tail_start, self._id_start, self._id_len = (
            grown(a, need) for a in per_entry
        )
        self._tail_words = grown(self._tail_words, self._tail_used + tail_words)
        self._ids = grown(self._ids, self._ids_used + ids)

    def _empty_slots(self) -> np.ndarray:
        """Rows (hash as int64, entry index); entry -1 marks an empty slot. One row is one 16-byte read."""
        slots = np.zeros((1 << self._bits, 2), dtype=np.int64)
        slots[:, 1] = -1
        return slots

    def _rehash(self) -> None:
        while self.size * 2 > (1 << self._bits):
            self._bits += 1
        self._slots = self._empty_slots()
        self._place(np.arange(self.size))

    def _place(self, entries: np.ndarray) -> None:
        """Put entries into slots: linear probing, all at once. When several want the same free slot, one write
        wins (whichever numpy applies last) and is read back; the others probe on. An entry whose hash a slot
        already holds is left out (lookups stop at the first slot with their hash)."""
        mask = (1 << self._bits) - 1
        hashes = self._hash[entries].view(np.int64)
        pos = hashes & mask
        flat = self._slots.reshape(-1)  # row i is flat[2i] (hash), flat[2i + 1] (entry)
        todo = np.arange(entries.size)
        while todo.size:
            rows = np.take(self._slots, pos[todo], axis=0)
            occupied = rows[:, 1] >= 0
            duplicate = occupied & (rows[:, 0] == hashes[todo])  # same hash as a stored key: not cached
            free = todo[~occupied]
            flat[2 * pos[free] + 1] = entries[free]
            won = free[flat[2 * pos[free] + 1] == entries[free]]
            flat[2 * pos[won]] = hashes[won]
            moving = todo[occupied & ~duplicate]
            pos[moving] = (pos[moving] + 1) & mask
            placed = np.zeros(todo.size, dtype=bool)
            placed[np.searchsorted(todo, won)] = True
            todo = todo[~placed & ~duplicate]


class IntMap:
    """A read-only hash map from non-negative int64 keys to int64 values, looked up many keys at a time (open
    addressing, linear probing, at most 1/4 full). What BPE uses for pair -> merge value."""

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        self._bits = max(int(4 * max(keys.size, 1) - 1).bit_length(), 4)
        mask = (1 << self._bits) - 1
        self._slots = np.full((1 << self._bits, 2), -1, dtype=np.int64)  # (key, value); key -1 = empty
        flat = self._slots.reshape(-1)
        pos = self._home(keys)
        todo = np.arange(keys.size)
        while todo.size:  # several keys may want one free slot: one write wins, read back; the rest probe on
            free = todo[flat[2 * pos[todo]] < 0]
            flat[2 * pos[free]] = keys[free]
            won = free[flat[2 * pos[free]] == keys[free]]
            flat[2 * pos[won] + 1] = values[won]
            placed = np.zeros(keys.size, dtype=bool)
            placed[won] = True
            todo = todo[~placed[todo]]
            pos[todo] = (pos[todo] + 1) & mask  # (a loser's slot is taken now, so it moves on as well)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        mixed = keys.astype(np.uint64) * _K1  # Fibonacci hashing: the top bits of key * golden ratio
        return (mixed >> np.uint64(64 - self._bits)).astype(np.int64)

    @property
    def slots(self) -> np.ndarray:
        """The (key, value) rows; key -1 marks an empty row (read by the C BPE kernel,
        _tokenization/encode_kernel.c)."""
        return self._slots

    @property
    def bits(self) -> int:
        return self._bits

    def get(self, keys: np.ndarray, default: int) -> np.ndarray:
        return probe(self._slots, keys, self._home(keys), (1 << self._bits) - 1, empty_column=0, default=default)
