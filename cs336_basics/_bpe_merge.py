"""The compiled BPE merge engine (numba, `cache=True`): `merge_words` runs every merge in one call.

Contract: for the distinct pre-tokens of a corpus (their bytes concatenated, their counts), `merge_words` returns the
merges of the textbook trainer (`cs336_basics.bpe_reference.merge_reference`) in the same order: the most frequent
adjacent pair, ties to the lexicographically greatest `(bytes_a, bytes_b)`. tests/test_train_bpe.py checks this
against the reference with Hypothesis and the corpora of tests/fixtures/bpe/, and against the pure-Python engine.

It is kept apart from bpe.py so that importing bpe.py does not import numba, and editing bpe.py does not invalidate
the compiled cache. Compile time is the first run's cost, so the engine is one kernel with few small helpers, and
every integer array is int64 so that each helper compiles once (one signature each).

Legend (the names used below):
    word w      a distinct pre-token: symbols syms[wstart[w] : wstart[w] + wlen[w]], counted wcnt[w] times
    token t     a symbol: bytes tok.data[tok.off[t] : tok.off[t] + tok.length[t]]; 0..255 are the single bytes
    slot s      a distinct adjacent pair (pa[s], pb[s]) of tokens: pcnt[s] occurrences (times word counts), and a
                list of words that held it: phead[s] -> node_word / node_next (append-only, may hold stale words)
    ht          an open-addressing hash table: pair key (a << 32 | b) -> slot
    heap        a lazy max-heap of (count hc, slot hs), ordered by count, then the pair's bytes: a popped entry whose
                count is out of date is pushed back with the current one
    stamp       the merge step + 1; wstamp / sstamp mark the words and slots already visited in this step

The algorithm: pair counts only go down when a merge happens, except those of pairs that hold the new token, which
are pushed after each step; each step rewrites, in place and left to right, only the words that hold the merged
pair, and changes only the counts of the pairs around each occurrence (so a pre-token of megabytes costs a scan per
merge that touches it, not a recount). Tokens are compared by bytes, not by id: should a merge
produce a byte string that already exists (say `abc` from `ab`+`c` and later from `a`+`bc`), the existing token is
reused, as a trainer keyed by bytes would.
"""

from typing import NamedTuple

import numpy as np
from numba import njit, types


class Tokens(NamedTuple):
    """The byte strings of the tokens: token t is data[off[t] : off[t] + length[t]]."""

    off: np.ndarray
    length: np.ndarray
    data: np.ndarray
    table: np.ndarray  # open-addressing hash table: bytes -> token id (-1 empty)


class Result(NamedTuple):
    """What `merge_words` returns: merge k is (token merges[2k], token merges[2k + 1]), k < n_merges."""

    merges: np.ndarray
    n_merges: int
    tokens: Tokens


# Each helper has one explicit signature: otherwise numba compiles one version per literal argument (0, -1, 256...).
I64 = types.int64
A = types.int64[::1]  # a contiguous 1-D int64 array
TOK = types.NamedTuple([A, A, types.uint8[::1], A], Tokens)


@njit(A(I64, I64), cache=True)
def _filled(n, value):
    """A new int64 array of n copies of value (np.full, without compiling its implementation)."""
    a = np.empty(n, np.int64)
    for i in range(n):
        a[i] = value
    return a


@njit(A(A, I64, I64), cache=True)
def _grow(a, need, value):
    """`a` if it holds `need` items, else a copy at least twice as long, its new tail set to `value`."""
    if need <= a.shape[0]:
        return a
    b = _filled(max(need, 2 * a.shape[0]), value)
    for i in range(a.shape[0]):
        b[i] = a[i]
    return b


@njit(I64(A, A, I64), cache=True)
def _ht_find(keys, vals, key):
    """The slot of pair `key`, or -1."""
    mask = keys.shape[0] - 1
    h = np.int64((np.uint64(key) * np.uint64(11400714819323198485)) >> np.uint64(28)) & mask
    while keys[h] != key:
        if keys[h] == -1:
            return -1
        h = (h + 1) & mask
    return vals[h]


@njit(types.void(A, A, I64, I64), cache=True)
def _ht_insert(keys, vals, key, val):
    mask = keys.shape[0] - 1
    h = np.int64((np.uint64(key) * np.uint64(11400714819323198485)) >> np.uint64(28)) & mask
    while keys[h] != -1:
        h = (h + 1) & mask
    keys[h] = key
    vals[h] = val


@njit(I64(I64, I64, TOK), cache=True)
def _cmp_tok(x, y, tok):
    """Compare the bytes of tokens x and y: -1, 0 or 1, as Python compares bytes."""
    if x == y:
        return 0
    ox, oy, lx, ly = tok.off[x], tok.off[y], tok.length[x], tok.length[y]
    for i in range(lx if lx < ly else ly):
        if tok.data[ox + i] != tok.data[oy + i]:
            return 1 if tok.data[ox + i] > tok.data[oy + i] else -1
    return 0 if lx == ly else (1 if lx > ly else -1)


@njit(types.boolean(I64, I64, I64, I64, A, A, TOK), cache=True)
def _better(c1, s1, c2, s2, pa, pb, tok):
    """Heap order: the higher count first, then the lexicographically greater pair (bytes_a, bytes_b)."""
    if c1 != c2:
        return c1 > c2
    r = _cmp_tok(pa[s1], pa[s2], tok)
    if r == 0:
        r = _cmp_tok(pb[s1], pb[s2], tok)
    return r > 0


@njit(I64(A, A, I64, I64, I64, A, A, TOK), cache=True)
def _heap_push(hc, hs, n, c, s, pa, pb, tok):
    """Push (c, s) on the heap of size n (arrays long enough); returns the new size."""
    i = n
    while i > 0:
        parent = (i - 1) >> 1
        if not _better(c, s, hc[parent], hs[parent], pa, pb, tok):
            break
        hc[i] = hc[parent]
        hs[i] = hs[parent]
        i = parent
    hc[i] = c
    hs[i] = s
    return n + 1


@njit(I64(A, A, I64, A, A, TOK), cache=True)
def _heap_pop(hc, hs, n, pa, pb, tok):
    """Remove the root (the caller read it first); returns the new size."""
    n -= 1
    c = hc[n]
    s = hs[n]
    i = 0
    while 2 * i + 1 < n:
        child = 2 * i + 1
        if child + 1 < n and _better(hc[child + 1], hs[child + 1], hc[child], hs[child], pa, pb, tok):
            child += 1
        if not _better(hc[child], hs[child], c, s, pa, pb, tok):
            break
        hc[i] = hc[child]
        hs[i] = hs[child]
        i = child
    hc[i] = c
    hs[i] = s
    return n


@njit(I64(TOK, I64, I64), cache=True)
def _tok_slot(tok, off, length):
    """The table position of the token with bytes tok.data[off : off + length], or of the empty entry it would take."""
    mask = tok.table.shape[0] - 1
    h = np.uint64(14695981039346656037)  # FNV-1a
    for i in range(length):
        h = (h ^ np.uint64(tok.data[off + i])) * np.uint64(1099511628211)
    p = np.int64(h >> np.uint64(20)) & mask
    while tok.table[p] != -1:
        t = tok.table[p]
        if tok.length[t] == length:
            same = True
            for i in range(length):
                if tok.data[tok.off[t] + i] != tok.data[off + i]:
                    same = False
                    break
            if same:
                return p
        p = (p + 1) & mask
    return p


@njit(cache=True, nogil=True)
def merge_words(syms, wstart, wcnt, num_merges, progress):
    """Up to `num_merges` merges of the words syms[wstart[w] : wstart[w + 1]] (bytes as int64, each word at least
    2 long) counted wcnt[w] times; progress[0] holds the merges done so far (read by another thread for a bar)."""
    n_words = wcnt.shape[0]
    wlen = np.empty(n_words, np.int64)
    for w in range(n_words):
        wlen[w] = wstart[w + 1] - wstart[w]
    # tokens: the 256 bytes, then room for one per merge
    n_tok_max = 256 + num_merges
    tcap = 1024
    while tcap < 2 * n_tok_max:
        tcap *= 2
    tok = Tokens(_filled(n_tok_max, 0), _filled(n_tok_max, 1), np.empty(4096, np.uint8), _filled(tcap, -1))
    for t in range(256):
        tok.off[t] = t
        tok.data[t] = t
        tok.table[_tok_slot(tok, t, 1)] = t
    n_tok = 256
    tok_used = 256
    # pair slots, the pair table, the word lists: counted from every word
    cap = 1024
    while cap < n_words:
        cap *= 2
    ht_keys = _filled(4 * cap, -1)
    ht_vals = _filled(4 * cap, 0)
    pa = _filled(cap, 0)
    pb = _filled(cap, 0)
    pcnt = _filled(cap, 0)
    phead = _filled(cap, -1)
    sstamp = _filled(cap, 0)
    node_word = _filled(syms.shape[0] + 16, 0)
    node_next = _filled(syms.shape[0] + 16, 0)
    n_slots = 0
    n_nodes = 0
    wstamp = _filled(n_words, 0)
    touched = _filled(1024, 0)
    add_x = _filled(1024, 0)
    add_y = _filled(1024, 0)
    merges = _filled(2 * num_merges, 0)  # merge k is (merges[2k], merges[2k + 1])
    hc = _filled(16, 0)
    hs = _filled(16, 0)
    heap_n = 0
    step = -1  # the initial count is step -1: every pair of every word is "new"
    new = -2  # the token made by this step (none while counting)
    while step < num_merges:
        if step >= 0:
            # 1) the best pair: pop until the top entry's count is current
            best = -1
            while heap_n > 0:
                c = hc[0]
                s = hs[0]
                heap_n = _heap_pop(hc, hs, heap_n, pa, pb, tok)
                if pcnt[s] == c and c > 0:
                    best = s
                    break
                if pcnt[s] > 0:
                    heap_n = _heap_push(hc, hs, heap_n, pcnt[s], s, pa, pb, tok)
            if best < 0:
                break
            a = pa[best]
            b = pb[best]
            merges[2 * step] = a
            merges[2 * step + 1] = b
            # 2) the merged token's bytes, reusing an existing token with the same bytes
            la = tok.length[a]
            lb = tok.length[b]
            if tok_used + la + lb > tok.data.shape[0]:
                data = np.empty(2 * (tok_used + la + lb), np.uint8)
                for i in range(tok_used):
                    data[i] = tok.data[i]
                tok = Tokens(tok.off, tok.length, data, tok.table)
            for i in range(la):
                tok.data[tok_used + i] = tok.data[tok.off[a] + i]
            for i in range(lb):
                tok.data[tok_used + la + i] = tok.data[tok.off[b] + i]
            p = _tok_slot(tok, tok_used, la + lb)
            new = tok.table[p]
            if new == -1:
                new = n_tok
                n_tok += 1
                tok.off[new] = tok_used
                tok.length[new] = la + lb
                tok.table[p] = new
                tok_used += la + lb
            node = phead[best]
        else:
            a = b = best = -1
            node = 0
        # 3) each word that holds (a, b): merge, recount the pairs around each occurrence (step -1: count every word)
        stamp = step + 2
        n_touched = 0
        while (step < 0 and node < n_words) or (step >= 0 and node >= 0):
            if step < 0:
                w = node
                node += 1
            else:
                w = node_word[node]
                node = node_next[node]
                if wstamp[w] == stamp:
                    continue
            wstamp[w] = stamp
            st = wstart[w]
            n = wlen[w]
            c = wcnt[w]
            if n > add_x.shape[0]:
                add_x = _grow(add_x, n, 0)
                add_y = _grow(add_y, n, 0)
            n_add = 0  # the pairs the word gains: (add_x[k], add_y[k]), k < n_add
            if step < 0:
                for i in range(n - 1):
                    add_x[i] = syms[st + i]
                    add_y[i] = syms[st + i + 1]
                n_add = n - 1
            else:
                found = False
                for i in range(n - 1):
                    if syms[st + i] == a and syms[st + i + 1] == b:
                        found = True
                        break
                if not found:  # a stale list entry: the word lost this pair in an earlier merge
                    continue
                # merge in place, left to right (i reads the old word, j writes the new one; j <= i, so the old
                # symbols at i - 1 and beyond are still there); only the pairs around each occurrence change
                j = 0
                i = 0
                merged_last = False
                while i < n:
                    if i < n - 1 and syms[st + i] == a and syms[st + i + 1] == b:
                        if i > 0:  # the old (left, a) goes
                            pcnt[_ht_find(ht_keys, ht_vals, (syms[st + i - 1] << 32) | a)] -= c
                        if i + 2 < n and not (i + 3 < n and syms[st + i + 2] == a and syms[st + i + 3] == b):
                            pcnt[_ht_find(ht_keys, ht_vals, (b << 32) | syms[st + i + 2])] -= c  # (b, right) goes
                        if j > 0:  # (left, new) comes, left being new when the previous occurrence ended here
                            add_x[n_add] = syms[st + j - 1]
                            add_y[n_add] = new
                            n_add += 1
                        syms[st + j] = new
                        merged_last = True
                        i += 2
                    else:
                        if merged_last:  # (new, right) comes
                            add_x[n_add] = new
                            add_y[n_add] = syms[st + i]
                            n_add += 1
                        syms[st + j] = syms[st + i]
                        merged_last = False
                        i += 1
                    j += 1
                wlen[w] = j
            for k in range(n_add):
                x = add_x[k]
                y = add_y[k]
                key = (x << 32) | y
                s = _ht_find(ht_keys, ht_vals, key)
                if s < 0:
                    if 2 * (n_slots + 1) > ht_keys.shape[0]:  # keep the table at most half full: rebuild it
                        ht_keys = _filled(2 * ht_keys.shape[0], -1)
                        ht_vals = _filled(ht_keys.shape[0], 0)
                        for q in range(n_slots):
                            _ht_insert(ht_keys, ht_vals, (pa[q] << 32) | pb[q], q)
                    s = n_slots
                    n_slots += 1
                    if n_slots > pa.shape[0]:
                        pa = _grow(pa, n_slots, 0)
                        pb = _grow(pb, n_slots, 0)
                        pcnt = _grow(pcnt, n_slots, 0)
                        phead = _grow(phead, n_slots, -1)
                        sstamp = _grow(sstamp, n_slots, 0)
                    pa[s] = x
                    pb[s] = y
                    _ht_insert(ht_keys, ht_vals, key, s)
                pcnt[s] += c
                if phead[s] < 0 or node_word[phead[s]] != w:  # the word joins the pair's list
                    n_nodes += 1
                    if n_nodes > node_word.shape[0]:
                        node_word = _grow(node_word, n_nodes, 0)
                        node_next = _grow(node_next, n_nodes, 0)
                    node_word[n_nodes - 1] = w
                    node_next[n_nodes - 1] = phead[s]
                    phead[s] = n_nodes - 1
                if sstamp[s] != stamp:
                    sstamp[s] = stamp
                    n_touched += 1
                    if n_touched > touched.shape[0]:
                        touched = _grow(touched, n_touched, 0)
                    touched[n_touched - 1] = s
        if step >= 0:
            pcnt[best] = 0
        # 4) the pairs whose counts went up (on step -1: all of them) go on the heap
        hc = _grow(hc, heap_n + n_touched, 0)
        hs = _grow(hs, heap_n + n_touched, 0)
        for k in range(n_touched):
            s = touched[k]
            if pcnt[s] > 0:
                heap_n = _heap_push(hc, hs, heap_n, pcnt[s], s, pa, pb, tok)
        step += 1
        progress[0] = max(step, 0)
    return Result(merges, max(step, 0), tok)


def warm_up() -> None:
    """Compile (first use on a checkout) or load the engine: a 3-merge problem."""
    words = np.array([97, 98, 97, 98, 99], np.int64)
    merge_words(words, np.array([0, 5], np.int64), np.array([2], np.int64), 3, np.zeros(1, np.int64))
