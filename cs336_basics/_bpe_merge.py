"""The compiled kernels of BPE merging (numba, `cache=True`), kept apart from bpe.py so that importing bpe.py
(for its pattern or the CLI's --help) does not import numba, and editing bpe.py does not invalidate the cache.

The state is a tuple of arrays passed into and returned from `merge_steps`, so Python can run the merges in
batches (for a progress bar) while growable arrays are reallocated inside the kernels. See bpe.py's docstring for
the algorithm: pair -> slot open-addressing table, per-slot append-only lists of words, a lazy max-heap ordered by
(count, pair bytes), whole-word recount of the words that hold the merged pair.
"""

import numpy as np
from numba import njit


@njit(cache=True)
def _grow(a, need):
    if need <= a.shape[0]:
        return a
    b = np.empty(max(need, 2 * a.shape[0]), a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _pair_hash(key, mask):
    return np.int64((np.uint64(key) * np.uint64(11400714819323198485)) >> np.uint64(28)) & mask


@njit(cache=True)
def _ht_find(keys, vals, key):
    mask = keys.shape[0] - 1
    h = _pair_hash(key, mask)
    while True:
        k = keys[h]
        if k == key:
            return vals[h]
        if k == -1:
            return -1
        h = (h + 1) & mask


@njit(cache=True)
def _ht_insert(keys, vals, key, val):
    mask = keys.shape[0] - 1
    h = _pair_hash(key, mask)
    while keys[h] != -1:
        h = (h + 1) & mask
    keys[h] = key
    vals[h] = val


@njit(cache=True)
def _ht_rebuild(pa, pb, n_slots, cap):
    keys = np.full(cap, -1, np.int64)
    vals = np.empty(cap, np.int32)
    for q in range(n_slots):
        _ht_insert(keys, vals, (np.int64(pa[q]) << 32) | pb[q], q)
    return keys, vals


@njit(cache=True)
def _cmp_tok(x, y, tok_off, tok_len, tok_data):
    """Compare the byte strings of tokens x and y: -1, 0, 1 (Python's bytes order)."""
    if x == y:
        return 0
    ox = tok_off[x]
    oy = tok_off[y]
    lx = tok_len[x]
    ly = tok_len[y]
    for i in range(min(lx, ly)):
        cx = tok_data[ox + i]
        cy = tok_data[oy + i]
        if cx != cy:
            return 1 if cx > cy else -1
    if lx == ly:
        return 0
    return 1 if lx > ly else -1


@njit(cache=True)
def _better(c1, s1, c2, s2, pa, pb, tok_off, tok_len, tok_data):
    """Heap order: higher count first, then the lexicographically greater pair (bytes_a, bytes_b)."""
    if c1 != c2:
        return c1 > c2
    r = _cmp_tok(pa[s1], pa[s2], tok_off, tok_len, tok_data)
    if r == 0:
        r = _cmp_tok(pb[s1], pb[s2], tok_off, tok_len, tok_data)
    return r > 0


@njit(cache=True)
def _heap_push(hc, hs, n, c, s, pa, pb, tok_off, tok_len, tok_data):
    i = n
    while i > 0:
        parent = (i - 1) >> 1
        if _better(c, s, hc[parent], hs[parent], pa, pb, tok_off, tok_len, tok_data):
            hc[i] = hc[parent]
            hs[i] = hs[parent]
            i = parent
        else:
            break
    hc[i] = c
    hs[i] = s
    return n + 1


@njit(cache=True)
def _heap_pop(hc, hs, n, pa, pb, tok_off, tok_len, tok_data):
    """Remove the root (the caller read it first); returns the new size."""
    n -= 1
    c = hc[n]
    s = hs[n]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        right = child + 1
        if right < n and _better(hc[right], hs[right], hc[child], hs[child], pa, pb, tok_off, tok_len, tok_data):
            child = right
        if _better(hc[child], hs[child], c, s, pa, pb, tok_off, tok_len, tok_data):
            hc[i] = hc[child]
            hs[i] = hs[child]
            i = child
        else:
            break
    if n > 0:
        hc[i] = c
        hs[i] = s
    return n


@njit(cache=True)
def _tok_hash(tok_data, off, length, mask):
    h = np.uint64(14695981039346656037)
    for i in range(length):
        h = (h ^ np.uint64(tok_data[off + i])) * np.uint64(1099511628211)
    return np.int64(h >> np.uint64(20)) & mask


@njit(cache=True)
def _tok_find(tokht, tok_data, off, length, tok_off, tok_len):
    """Id of the existing token with bytes tok_data[off:off+length], or -1."""
    mask = tokht.shape[0] - 1
    h = _tok_hash(tok_data, off, length, mask)
    while True:
        t = tokht[h]
        if t == -1:
            return -1
        if tok_len[t] == length:
            o = tok_off[t]
            same = True
            for i in range(length):
                if tok_data[o + i] != tok_data[off + i]:
                    same = False
                    break
            if same:
                return t
        h = (h + 1) & mask


@njit(cache=True)
def _tok_insert(tokht, tok_data, t, tok_off, tok_len):
    mask = tokht.shape[0] - 1
    h = _tok_hash(tok_data, tok_off[t], tok_len[t], mask)
    while tokht[h] != -1:
        h = (h + 1) & mask
    tokht[h] = t


@njit(cache=True)
def init_state(syms, wstart, wlen, wcnt, num_merges):
    n_words = wlen.shape[0]
    n_pair_occurrences = syms.shape[0]  # an upper bound on distinct pairs and on list nodes
    # pair slots: (a, b), count, head of the list of words holding it; grown as distinct pairs appear, since
    # there are far fewer of them than pair occurrences
    cap0 = 1024
    while cap0 < n_words:
        cap0 *= 2  # the hash table's size must stay a power of two (it masks)
    ht_keys = np.full(4 * cap0, -1, np.int64)
    ht_vals = np.empty(4 * cap0, np.int32)
    pa = np.empty(cap0, np.int32)
    pb = np.empty(cap0, np.int32)
    pcnt = np.zeros(cap0, np.int64)
    phead = np.full(cap0, -1, np.int32)
    node_word = np.empty(n_pair_occurrences + 16, np.int32)
    node_next = np.empty(n_pair_occurrences + 16, np.int32)
    n_slots = 0
    n_nodes = 0
    for w in range(n_words):
        st = wstart[w]
        c = wcnt[w]
        for i in range(wlen[w] - 1):
            x = syms[st + i]
            y = syms[st + i + 1]
            key = (np.int64(x) << 32) | y
            s = _ht_find(ht_keys, ht_vals, key)
            if s < 0:
                if 2 * (n_slots + 1) > ht_keys.shape[0]:
                    ht_keys, ht_vals = _ht_rebuild(pa, pb, n_slots, 2 * ht_keys.shape[0])
                s = n_slots
                n_slots += 1
                if n_slots > pa.shape[0]:
                    old = pa.shape[0]
                    pa = _grow(pa, n_slots)
                    pb = _grow(pb, n_slots)
                    pcnt = _grow(pcnt, n_slots)
                    pcnt[old:] = 0
                    phead = _grow(phead, n_slots)
                    phead[old:] = -1
                pa[s] = x
                pb[s] = y
                _ht_insert(ht_keys, ht_vals, key, s)
            pcnt[s] += c
            if phead[s] < 0 or node_word[phead[s]] != w:
                node_word[n_nodes] = w
                node_next[n_nodes] = phead[s]
                phead[s] = n_nodes
                n_nodes += 1
    # tokens: the 256 bytes, then room for one per merge
    n_tok_max = 256 + num_merges
    tok_off = np.zeros(n_tok_max, np.int64)
    tok_len = np.zeros(n_tok_max, np.int64)
    tok_data = np.empty(4096, np.uint8)
    tcap = 1024
    while tcap < 2 * n_tok_max:
        tcap *= 2
    tokht = np.full(tcap, -1, np.int64)
    for t in range(256):
        tok_data[t] = t
        tok_off[t] = t
        tok_len[t] = 1
        _tok_insert(tokht, tok_data, t, tok_off, tok_len)
    hc = np.empty(n_slots + 16, np.int64)
    hs = np.empty(n_slots + 16, np.int32)
    heap_n = 0
    for s in range(n_slots):
        heap_n = _heap_push(hc, hs, heap_n, pcnt[s], s, pa, pb, tok_off, tok_len, tok_data)
    wstamp = np.zeros(n_words, np.int64)
    sstamp = np.zeros(pa.shape[0], np.int64)
    touched = np.empty(1024, np.int32)
    merges_out = np.empty((num_merges, 2), np.int64)
    meta = np.array([n_slots, n_nodes, heap_n, 256, 256], np.int64)  # slots, nodes, heap, tokens, tok_data used
    return (
        merges_out, tok_off, tok_len, tok_data, tokht, syms, wstart, wlen, wcnt,
        ht_keys, ht_vals, pa, pb, pcnt, phead, node_word, node_next, hc, hs, wstamp, sstamp, touched, meta,
    )  # fmt: skip


@njit(cache=True)
def merge_steps(state, step0, step1):
    """Merges step0..step1-1; returns (state, steps reached), fewer than step1 when no pair is left."""
    (
        merges_out, tok_off, tok_len, tok_data, tokht, syms, wstart, wlen, wcnt,
        ht_keys, ht_vals, pa, pb, pcnt, phead, node_word, node_next, hc, hs, wstamp, sstamp, touched, meta,
    ) = state  # fmt: skip
    n_slots, n_nodes, heap_n, n_tok, tok_used = meta[0], meta[1], meta[2], meta[3], meta[4]
    step = step0
    while step < step1:
        # 1) the best pair: pop until the top entry's stored count is current
        best = -1
        while heap_n > 0:
            c = hc[0]
            s = hs[0]
            heap_n = _heap_pop(hc, hs, heap_n, pa, pb, tok_off, tok_len, tok_data)
            cur = pcnt[s]
            if cur <= 0:
                continue
            if cur != c:
                heap_n = _heap_push(hc, hs, heap_n, cur, s, pa, pb, tok_off, tok_len, tok_data)
                continue
            best = s
            break
        if best < 0:
            break
        a = pa[best]
        b = pb[best]
        merges_out[step, 0] = a
        merges_out[step, 1] = b
        # 2) the merged token, reusing an existing symbol with the same bytes
        la = tok_len[a]
        lb = tok_len[b]
        tok_data = _grow(tok_data, tok_used + la + lb)
        for i in range(la):
            tok_data[tok_used + i] = tok_data[tok_off[a] + i]
        for i in range(lb):
            tok_data[tok_used + la + i] = tok_data[tok_off[b] + i]
        t = _tok_find(tokht, tok_data, tok_used, la + lb, tok_off, tok_len)
        if t < 0:
            t = n_tok
            n_tok += 1
            tok_off[t] = tok_used
            tok_len[t] = la + lb
            tok_used += la + lb
            _tok_insert(tokht, tok_data, t, tok_off, tok_len)
        # 3) rewrite every word that holds (a, b): remove its old pairs, merge, add its new pairs
        stamp = step + 1
        n_touched = 0
        node = phead[best]
        while node >= 0:
            w = node_word[node]
            node = node_next[node]
            if wstamp[w] == stamp:
                continue
            wstamp[w] = stamp
            st = wstart[w]
            L = wlen[w]
            found = False
            for i in range(L - 1):
                if syms[st + i] == a and syms[st + i + 1] == b:
                    found = True
                    break
            if not found:  # a stale entry: the word lost this pair in an earlier merge
                continue
            c = wcnt[w]
            for i in range(L - 1):
                key = (np.int64(syms[st + i]) << 32) | syms[st + i + 1]
                pcnt[_ht_find(ht_keys, ht_vals, key)] -= c
            j = 0
            i = 0
            while i < L:
                if i < L - 1 and syms[st + i] == a and syms[st + i + 1] == b:
                    syms[st + j] = t
                    i += 2
                else:
                    syms[st + j] = syms[st + i]
                    i += 1
                j += 1
            L = j
            wlen[w] = L
            for i in range(L - 1):
                x = syms[st + i]
                y = syms[st + i + 1]
                key = (np.int64(x) << 32) | y
                s = _ht_find(ht_keys, ht_vals, key)
                if s < 0:
                    if 2 * (n_slots + 1) > ht_keys.shape[0]:  # keep the table at most half full
                        ht_keys, ht_vals = _ht_rebuild(pa, pb, n_slots, 2 * ht_keys.shape[0])
                    s = n_slots
                    n_slots += 1
                    pa = _grow(pa, n_slots)
                    pb = _grow(pb, n_slots)
                    if n_slots > pcnt.shape[0]:
                        old = pcnt.shape[0]
                        pcnt = _grow(pcnt, n_slots)
                        pcnt[old:] = 0
                        phead = _grow(phead, n_slots)
                        phead[old:] = -1
                        sstamp = _grow(sstamp, n_slots)
                        sstamp[old:] = 0
                    pa[s] = x
                    pb[s] = y
                    _ht_insert(ht_keys, ht_vals, key, s)
                pcnt[s] += c
                if x == t or y == t:
                    if phead[s] < 0 or node_word[phead[s]] != w:
                        n_nodes += 1
                        node_word = _grow(node_word, n_nodes)
                        node_next = _grow(node_next, n_nodes)
                        node_word[n_nodes - 1] = w
                        node_next[n_nodes - 1] = phead[s]
                        phead[s] = n_nodes - 1
                    if sstamp[s] != stamp:
                        sstamp[s] = stamp
                        n_touched += 1
                        touched = _grow(touched, n_touched)
                        touched[n_touched - 1] = s
        pcnt[best] = 0
        # 4) pairs with the new token are the only ones whose counts went up: (re)push them
        for k in range(n_touched):
            s = touched[k]
            if pcnt[s] > 0:
                hc = _grow(hc, heap_n + 1)
                hs = _grow(hs, heap_n + 1)
                heap_n = _heap_push(hc, hs, heap_n, pcnt[s], s, pa, pb, tok_off, tok_len, tok_data)
        step += 1
    meta[0] = n_slots
    meta[1] = n_nodes
    meta[2] = heap_n
    meta[3] = n_tok
    meta[4] = tok_used
    state = (
        merges_out, tok_off, tok_len, tok_data, tokht, syms, wstart, wlen, wcnt,
        ht_keys, ht_vals, pa, pb, pcnt, phead, node_word, node_next, hc, hs, wstamp, sstamp, touched, meta,
    )  # fmt: skip
    return state, step
