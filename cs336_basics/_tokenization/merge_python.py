"""Pure-Python incremental BPE merging: for small problems, where building or loading the C engine costs more than
the merges, and for every problem where there is no C compiler (about 5x slower than C on large ones).

Contract: the same merges, in the same order, as the textbook trainer (`bpe_reference.merge_reference`) and the C
engine (`_tokenization/merge_kernel.c`); tests/test_train_bpe.py checks both against the reference with Hypothesis and
the fixtures.
The result is the same; the means differ: the C engine links symbols by position and lists the positions of each
pair, this one keeps words as strings (`str.find` / `str.replace` do the scanning in C) and lists of word indices;
both change only the pair counts around each occurrence.

Symbols are ids, one per distinct byte string (a merge that yields an existing byte string reuses its id, as a trainer
keyed by bytes does), and each word is a str holding one character chr(id) per symbol: bytes 0..255 are ids 0..255, so
a word starts as `w.decode("latin-1")`, a pair is a 2-character str, `str.find` locates a pair and `str.replace`
performs a merge in C (left to right, non-overlapping: exactly BPE's rule). `pair_counts` maps a pair to its count over
words times their counts; `where` maps a pair to the indices of words that held it when it was counted (a superset,
duplicates allowed: a word is checked with `find` before it is rewritten). A merge updates only the pairs around each
occurrence: (x, a), (a, b), (b, y) lose the word's count and (x, new), (new, y) gain it, where x is the symbol left of
the occurrence after the merges before it (new itself when the previous occurrence ends there: a b a b -> new new).
A lazy max-heap of (-count, key, pair) finds the best pair: counts only go down, except those of pairs holding the new
symbol, which are pushed after each merge; a popped entry whose count is stale is pushed back with its current count.
Ties break on the lexicographically greatest (bytes, bytes) pair through `key`, a bytes string ordered opposite to it.
"""

import heapq
from collections import defaultdict
from collections.abc import Callable
from operator import add

# byte x -> the 2-byte unit 255 - x; a symbol's key is its units then the unit 256 (b"\x01\x00"), so keys are
# prefix-free and a prefix gets the greater key: key(s) < key(t) iff s > t, and key(a) + key(b) orders pairs the same
_UNITS = [bytes([0, 255 - x]) for x in range(256)]


def _desc_key(s: bytes) -> bytes:
    """A bytes key ordered opposite to `s`: _desc_key(s) < _desc_key(t) iff s > t (e.g. b"ab" > b"a" > b"")."""
    return b"".join(map(_UNITS.__getitem__, s)) + b"\x01\x00"


def merge_python(
    words: list[bytes], wcnt: list[int], num_merges: int, on_merge: Callable[[], None] | None = None
) -> list[tuple[bytes, bytes]]:
    """Up to `num_merges` merges of the distinct pre-tokens `words` (each of length >= 2) counted `wcnt` times."""
    syms = [w.decode("latin-1") for w in words]
    tok = [bytes([x]) for x in range(256)]
    desc = [_desc_key(t) for t in tok]
    ids = {t: chr(x) for x, t in enumerate(tok)}
    # counts summed from `where`, whose lists repeat a word once per occurrence of the pair in it
    where: defaultdict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(syms):
        for p in map(add, s, s[1:]):
            where[p].append(i)
    wc = wcnt.__getitem__
    pair_counts = {p: sum(map(wc, idx)) for p, idx in where.items()}
    get = pair_counts.get
    heap = [(-c, desc[ord(p[0])] + desc[ord(p[1])], p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    heappop = heapq.heappop
    heappush = heapq.heappush
    merges: list[tuple[bytes, bytes]] = []
    while len(merges) < num_merges and heap:
        neg, key, pair = heappop(heap)
        current = pair_counts[pair]
        if current != -neg:
            if current > 0:
                heappush(heap, (-current, key, pair))
            continue
        a, b = pair
        ta = tok[ord(a)]
        tb = tok[ord(b)]
        merges.append((ta, tb))
        nb = ta + tb
        new = ids.get(nb)
        if new is None:
            new = chr(len(tok))
            ids[nb] = new
            tok.append(nb)
            desc.append(_desc_key(nb))
        delta: dict[str, int] = {}  # count changes of the pairs holding `new`, pushed once all words are done
        dget = delta.get
        for i in set(where.pop(pair)):  # (once per word: a long word is listed once per occurrence)
            s = syms[i]
            j = s.find(pair)
            if j < 0:
                continue
            c = wcnt[i]
            last = len(s) - 2
            end = -1
            while j >= 0:
                pair_counts[pair] -= c
                if j:
                    if j == end:  # the previous occurrence ends here: undo its (new, a), count (new, new)
                        delta[new + a] -= c
                        p = new + new
                    else:
                        x = s[j - 1]
                        pair_counts[x + a] -= c
                        p = x + new
                    delta[p] = dget(p, 0) + c
                    where[p].append(i)
                if j < last:
                    y = s[j + 2]
                    pair_counts[b + y] -= c
                    p = new + y
                    delta[p] = dget(p, 0) + c
                    where[p].append(i)
                end = j + 2
                j = s.find(pair, end)
            syms[i] = s.replace(pair, new)
        for p, d in delta.items():
            c = get(p, 0) + d
            pair_counts[p] = c
            if c > 0:
                heappush(heap, (-c, desc[ord(p[0])] + desc[ord(p[1])], p))
        if on_merge is not None:
            on_merge()
    return merges
