"""Pure-Python incremental BPE merging: the same algorithm and tie-break as the numba kernels of _bpe_merge.py, for
small problems, where importing numba and loading its compiled cache (~1.5 s) costs more than the merges themselves.

Symbols are bytes objects, so a merge that yields an existing byte string reuses it, as a trainer keyed by bytes does.
State: each word is a list of symbols; `pair_counts` maps (a, b) to its count over words times their counts; `where`
maps a pair to the indices of the words that contained it when it was last counted (a superset: a word is checked
before it is rewritten). A lazy max-heap of (count, pair) finds the best pair: counts only go down, except those of
pairs holding the new symbol, which are pushed after each merge; a popped entry whose count is stale is pushed back
with its current count.
"""

import heapq
from collections.abc import Callable
from itertools import pairwise

_BYTES = [bytes([b]) for b in range(256)]


class _Desc:
    """A pair that sorts in descending order, so heapq's min-heap pops the lexicographically greatest pair first."""

    __slots__ = ("pair",)

    def __init__(self, pair: tuple[bytes, bytes]):
        self.pair = pair

    def __lt__(self, other: "_Desc") -> bool:
        return self.pair > other.pair


def merge_python(
    words: list[bytes], wcnt: list[int], num_merges: int, on_merge: Callable[[], None] | None = None
) -> list[tuple[bytes, bytes]]:
    """Up to `num_merges` merges of the distinct pre-tokens `words` (each of length >= 2) counted `wcnt` times."""
    syms = [list(map(_BYTES.__getitem__, w)) for w in words]
    pair_counts: dict[tuple[bytes, bytes], int] = {}
    where: dict[tuple[bytes, bytes], set[int]] = {}
    for i, (s, c) in enumerate(zip(syms, wcnt, strict=True)):
        for p in pairwise(s):
            pair_counts[p] = pair_counts.get(p, 0) + c
            ws = where.get(p)
            if ws is None:
                where[p] = {i}
            else:
                ws.add(i)
    heap = [(-c, _Desc(p)) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[bytes, bytes]] = []
    while len(merges) < num_merges and heap:
        neg, key = heapq.heappop(heap)
        pair = key.pair
        current = pair_counts.get(pair, 0)
        if current != -neg:  # stale: the count went down since this entry was pushed
            if current > 0:
                heapq.heappush(heap, (-current, key))
            continue
        merges.append(pair)
        a, b = pair
        new = a + b
        pushed = set()
        for i in sorted(where.pop(pair)):
            s = syms[i]
            n = len(s)
            # find the first occurrence; the word may no longer hold the pair (`where` is a superset)
            j = 0
            while j < n - 1 and not (s[j] == a and s[j + 1] == b):
                j += 1
            if j >= n - 1:
                continue
            c = wcnt[i]
            for p in pairwise(s):
                pair_counts[p] -= c
            out = s[:j]
            while j < n:
                if j < n - 1 and s[j] == a and s[j + 1] == b:
                    out.append(new)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            syms[i] = out
            for p in pairwise(out):
                pair_counts[p] = pair_counts.get(p, 0) + c
                if p[0] == new or p[1] == new:
                    pushed.add(p)
                    ws = where.get(p)
                    if ws is None:
                        where[p] = {i}
                    else:
                        ws.add(i)
        for p in pushed:
            c = pair_counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, _Desc(p)))
        if on_merge is not None:
            on_merge()
    return merges
