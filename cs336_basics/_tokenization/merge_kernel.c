/* The BPE merge engine in C, compiled by the system C compiler on first use (~0.3 s; cs336_basics/_tokenization/merge_kernel.py)
 * instead of numba's ~4 s of JIT.
 *
 * Contract: bpe_merge_words returns the merges of the textbook trainer (cs336_basics/_tokenization/bpe_reference.py), in order:
 * the most frequent adjacent pair, ties to the lexicographically greatest (bytes_a, bytes_b). Token ids are 0..255
 * for the bytes, then one per merge in order, except that a merge whose bytes already exist reuses that token (as a
 * trainer keyed by bytes does). tests/test_train_bpe.py checks every engine against the reference.
 *
 * The algorithm: every symbol of every word sits at a position p of linked arrays (sym, prv / nxt, word), and every
 * distinct adjacent pair has a slot with its count and the list of positions where it was formed. A merge visits only
 * the positions of its pair, left to right: it checks each is still an occurrence, merges it (the right symbol is
 * unlinked), and changes the counts of the pairs around it; so a merge costs its occurrences, whatever the length of
 * the words that hold them (a pre-token of megabytes is not scanned per merge). Counts only go down, except those of
 * the pairs holding the new token, which are pushed on the heap after each merge.
 *
 * Legend:
 *   position p  sym[p] the token there (-1 once merged into its left neighbour), prv[p] / nxt[p] its neighbours in
 *               its word (-1 at the ends), word[p] its word, counted wcnt[word[p]] times
 *   token t     bytes data[off[t] .. off[t] + len[t]); 0..255 are the single bytes
 *   slot s      a distinct adjacent pair (pa[s], pb[s]): pcnt[s] occurrences (times word counts), and the positions
 *               where it was formed: head[s] -> node_pos / node_next, in order (append-only, may hold stale ones)
 *   ht          open-addressing hash table: pair key (a << 32 | b) -> slot
 *   heap        lazy max-heap of (count hc, slot hs): a popped entry whose count is out of date is pushed back
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;
typedef int32_t i32;

#ifdef _WIN32
#define EXPORT __declspec(dllexport)
#else
#define EXPORT
#endif

typedef struct {
    i64 *off, *len, *table; /* table: open addressing, bytes -> token id (-1 empty) */
    uint8_t *data;
    i64 data_cap, used, n_tok, tmask;
} Tokens;

/* The capacity for `need` items of an array of `cap`: cap if it is enough, else the larger of 2 cap and need. */
static i64 grown(i64 cap, i64 need) { return need <= cap ? cap : (2 * cap > need ? 2 * cap : need); }

/* Resize *a to n items. 0, or -1 when out of memory (*a is then unchanged). */
static int resize64(i64 **a, i64 n) {
    i64 *b = realloc(*a, (size_t)n * sizeof(i64));
    if (!b) return -1;
    *a = b;
    return 0;
}

static int resize32(i32 **a, i64 n) {
    i32 *b = realloc(*a, (size_t)n * sizeof(i32));
    if (!b) return -1;
    *a = b;
    return 0;
}

/* Make a[0 .. need) valid: at least double the capacity, the new tail set to `fill`. 0, or -1 when out of memory. */
static int grow(i64 **a, i64 *cap, i64 need, i64 fill) {
    i64 n = grown(*cap, need);
    if (n == *cap) return 0;
    if (resize64(a, n)) return -1;
    for (i64 i = *cap; i < n; i++) (*a)[i] = fill;
    *cap = n;
    return 0;
}

static i64 *filled(i64 n, i64 value) {
    i64 *a = malloc((size_t)(n > 0 ? n : 1) * sizeof(i64));
    if (a)
        for (i64 i = 0; i < n; i++) a[i] = value;
    return a;
}

static i64 ht_hash(i64 key, i64 mask) { return (i64)(((uint64_t)key * 11400714819323198485ull) >> 28) & mask; }

static i64 ht_find(const i64 *keys, const i64 *vals, i64 mask, i64 key) {
    i64 h = ht_hash(key, mask);
    while (keys[h] != key) {
        if (keys[h] == -1) return -1;
        h = (h + 1) & mask;
    }
    return vals[h];
}

static void ht_insert(i64 *keys, i64 *vals, i64 mask, i64 key, i64 val) {
    i64 h = ht_hash(key, mask);
    while (keys[h] != -1) h = (h + 1) & mask;
    keys[h] = key;
    vals[h] = val;
}

/* Compare the bytes of tokens x and y: -1, 0 or 1, as Python compares bytes. */
static int cmp_tok(i64 x, i64 y, const Tokens *tok) {
    if (x == y) return 0;
    i64 lx = tok->len[x], ly = tok->len[y];
    int r = memcmp(tok->data + tok->off[x], tok->data + tok->off[y], (size_t)(lx < ly ? lx : ly));
    if (r) return r > 0 ? 1 : -1;
    return lx == ly ? 0 : (lx > ly ? 1 : -1);
}

/* Heap order: the higher count first, then the lexicographically greater pair (bytes_a, bytes_b). */
static int better(i64 c1, i64 s1, i64 c2, i64 s2, const i64 *pa, const i64 *pb, const Tokens *tok) {
    if (c1 != c2) return c1 > c2;
    int r = cmp_tok(pa[s1], pa[s2], tok);
    if (r == 0) r = cmp_tok(pb[s1], pb[s2], tok);
    return r > 0;
}

/* Push (c, s) on the heap of size n (arrays long enough); returns the new size. */
static i64 heap_push(i64 *hc, i64 *hs, i64 n, i64 c, i64 s, const i64 *pa, const i64 *pb, const Tokens *tok) {
    i64 i = n;
    while (i > 0) {
        i64 parent = (i - 1) >> 1;
        if (!better(c, s, hc[parent], hs[parent], pa, pb, tok)) break;
        hc[i] = hc[parent];
        hs[i] = hs[parent];
        i = parent;
    }
    hc[i] = c;
    hs[i] = s;
    return n + 1;
}

/* Remove the root (the caller read it first); returns the new size. */
static i64 heap_pop(i64 *hc, i64 *hs, i64 n, const i64 *pa, const i64 *pb, const Tokens *tok) {
    n -= 1;
    i64 c = hc[n], s = hs[n], i = 0;
    while (2 * i + 1 < n) {
        i64 child = 2 * i + 1;
        if (child + 1 < n && better(hc[child + 1], hs[child + 1], hc[child], hs[child], pa, pb, tok)) child += 1;
        if (!better(hc[child], hs[child], c, s, pa, pb, tok)) break;
        hc[i] = hc[child];
        hs[i] = hs[child];
        i = child;
    }
    hc[i] = c;
    hs[i] = s;
    return n;
}

/* The table position of the token with bytes data[off .. off + length), or of the empty entry it would take. */
static i64 tok_slot(const Tokens *tok, i64 off, i64 length) {
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (i64 i = 0; i < length; i++) h = (h ^ tok->data[off + i]) * 1099511628211ull;
    i64 p = (i64)(h >> 20) & tok->tmask;
    while (tok->table[p] != -1) {
        i64 t = tok->table[p];
        if (tok->len[t] == length && memcmp(tok->data + tok->off[t], tok->data + off, (size_t)length) == 0) return p;
        p = (p + 1) & tok->tmask;
    }
    return p;
}


typedef struct {
    i64 *ht_keys, *ht_vals, ht_cap;                  /* pair key -> slot */
    i64 *pa, *pb, *pcnt, *sstamp, slot_cap, n_slots; /* the slots */
    i32 *head, *tail;                                /* each slot's list of positions (node indices, -1: none) */
    i32 *node_pos, *node_next;                       /* the lists' nodes */
    i64 node_cap, n_nodes;
    i64 *touched, touched_cap, n_touched; /* the slots whose counts went up in this step */
} Pairs;

/* The slot of pair (x, y), made (count 0) if new. -1 when out of memory. */
static i64 slot_of(Pairs *P, i64 x, i64 y) {
    i64 key = (x << 32) | y;
    i64 s = ht_find(P->ht_keys, P->ht_vals, P->ht_cap - 1, key);
    if (s >= 0) return s;
    if (2 * (P->n_slots + 1) > P->ht_cap) { /* keep the table at most half full: rebuild it twice as large */
        i64 cap = 2 * P->ht_cap, *keys = filled(cap, -1), *vals = filled(cap, 0);
        if (!keys || !vals) return free(keys), free(vals), -1;
        for (i64 q = 0; q < P->n_slots; q++) ht_insert(keys, vals, cap - 1, (P->pa[q] << 32) | P->pb[q], q);
        free(P->ht_keys), free(P->ht_vals);
        P->ht_keys = keys, P->ht_vals = vals, P->ht_cap = cap;
    }
    s = P->n_slots++;
    if (P->n_slots > P->slot_cap) {
        i64 n = grown(P->slot_cap, P->n_slots);
        if (resize64(&P->pa, n) || resize64(&P->pb, n) || resize64(&P->pcnt, n) || resize64(&P->sstamp, n) ||
            resize32(&P->head, n) || resize32(&P->tail, n))
            return -1;
        P->slot_cap = n;
    }
    P->pa[s] = x, P->pb[s] = y, P->pcnt[s] = 0, P->sstamp[s] = -2, P->head[s] = P->tail[s] = -1; /* -2: no step */
    ht_insert(P->ht_keys, P->ht_vals, P->ht_cap - 1, key, s);
    return s;
}

/* Pair (x, y) formed at position p of a word counted c times: count it, list p, mark the slot touched in `step`. */
static int gain(Pairs *P, i64 x, i64 y, i64 p, i64 c, i64 step) {
    i64 s = slot_of(P, x, y);
    if (s < 0) return -1;
    P->pcnt[s] += c;
    if (P->n_nodes == P->node_cap) {
        i64 n = grown(P->node_cap, P->n_nodes + 1);
        if (resize32(&P->node_pos, n) || resize32(&P->node_next, n)) return -1;
        P->node_cap = n;
    }
    i32 n = (i32)P->n_nodes++;
    P->node_pos[n] = (i32)p, P->node_next[n] = -1;
    if (P->tail[s] < 0) P->head[s] = n;
    else P->node_next[P->tail[s]] = n;
    P->tail[s] = n;
    if (P->sstamp[s] != step) {
        P->sstamp[s] = step;
        if (grow(&P->touched, &P->touched_cap, P->n_touched + 1, 0)) return -1;
        P->touched[P->n_touched++] = s;
    }
    return 0;
}

/* Pair (x, y) at a position of a word counted c times is gone. -1 if it was never counted (a bug: stop, do not
 * write out of bounds). */
static int lose(Pairs *P, i64 x, i64 y, i64 c) {
    i64 s = ht_find(P->ht_keys, P->ht_vals, P->ht_cap - 1, (x << 32) | y);
    if (s < 0) return -1;
    P->pcnt[s] -= c;
    return 0;
}

static int cmp_i32(const void *x, const void *y) {
    i32 u = *(const i32 *)x, v = *(const i32 *)y;
    return (u > v) - (u < v);
}

/* The symbols of the words, by position (see the legend). */
typedef struct {
    i32 *sym, *prv, *nxt, *word;
    const i64 *wcnt;
} Words;

/* The heap of (count, slot) entries, and its capacity. */
typedef struct {
    i64 *c, *s, n, cap;
} Heap;

/* Push the slots touched since the last call whose counts are positive; clear the touched list. 0, or -1 (memory). */
static int push_touched(Heap *H, Pairs *P, const Tokens *tok) {
    if (H->n + P->n_touched > H->cap) {
        i64 cap = H->cap;
        if (grow(&H->c, &cap, H->n + P->n_touched, 0) || grow(&H->s, &H->cap, H->n + P->n_touched, 0)) return -1;
    }
    for (i64 k = 0; k < P->n_touched; k++) {
        i64 s = P->touched[k];
        if (P->pcnt[s] > 0) H->n = heap_push(H->c, H->s, H->n, P->pcnt[s], s, P->pa, P->pb, tok);
    }
    P->n_touched = 0;
    return 0;
}

/* The slot of the best pair: pop until the top entry's count is current (a stale one goes back with its current
 * count). -1 when no pair is left. */
static i64 pop_best(Heap *H, const Pairs *P, const Tokens *tok) {
    while (H->n > 0) {
        i64 c = H->c[0], s = H->s[0];
        H->n = heap_pop(H->c, H->s, H->n, P->pa, P->pb, tok);
        if (P->pcnt[s] == c && c > 0) return s;
        if (P->pcnt[s] > 0) H->n = heap_push(H->c, H->s, H->n, P->pcnt[s], s, P->pa, P->pb, tok);
    }
    return -1;
}

/* The token with the bytes of a then b: an existing one with those bytes, else a new one. -1 when out of memory.
 * (Greedy training likely never makes the same bytes twice, as a merge applies everywhere at once; the reference
 * trainer is keyed by bytes, so this one is too, whether or not it happens.) */
static i64 make_token(Tokens *tok, i64 a, i64 b) {
    i64 la = tok->len[a], lb = tok->len[b];
    if (tok->used + la + lb > tok->data_cap) {
        uint8_t *data = realloc(tok->data, (size_t)(2 * (tok->used + la + lb)));
        if (!data) return -1;
        tok->data = data;
        tok->data_cap = 2 * (tok->used + la + lb);
    }
    memcpy(tok->data + tok->used, tok->data + tok->off[a], (size_t)la);
    memcpy(tok->data + tok->used + la, tok->data + tok->off[b], (size_t)lb);
    i64 q = tok_slot(tok, tok->used, la + lb);
    if (tok->table[q] == -1) {
        i64 t = tok->n_tok++;
        tok->off[t] = tok->used;
        tok->len[t] = la + lb;
        tok->table[q] = t;
        tok->used += la + lb;
    }
    return tok->table[q];
}

/* Take slot s's list of positions into *buf, in increasing order: each step appends its positions in order, so the
 * list is sorted runs, and order matters where an occurrence's neighbour is merged in the same step. (A list comes
 * out unsorted only when a step makes a token again, from another pair, left of where an earlier step made it; no
 * test or fuzzing run has produced one, and the sort keeps the rule exact if one appears.) The count, or -1 when out
 * of memory. */
static i64 take_positions(Pairs *P, i64 s, i32 **buf, i64 *buf_cap) {
    i64 n = 0;
    int sorted = 1;
    for (i32 node = P->head[s]; node >= 0; node = P->node_next[node]) {
        if (n == *buf_cap) {
            if (resize32(buf, 2 * *buf_cap)) return -1;
            *buf_cap *= 2;
        }
        (*buf)[n] = P->node_pos[node];
        sorted &= n == 0 || (*buf)[n - 1] < (*buf)[n];
        n++;
    }
    P->head[s] = P->tail[s] = -1;
    if (!sorted) qsort(*buf, (size_t)n, sizeof(i32), cmp_i32);
    return n;
}

/* Merge (a, b) into `new` at each of the positions pos[0 .. n) that still holds it, left to right, and change the
 * counts of the pairs around each occurrence. 0; -1 when out of memory; -3 if a pair to lose was never counted. */
static int merge_at(Words *W, Pairs *P, const i32 *pos, i64 n, i64 a, i64 b, i64 new, i64 step) {
    i32 *sym = W->sym, *prv = W->prv, *nxt = W->nxt;
    i64 last = -1; /* the position merged just before */
    for (i64 k = 0; k < n; k++) {
        i64 p = pos[k], r = nxt[p];
        if (sym[p] != a || r < 0 || sym[r] != b) continue; /* stale: merged or changed since it was listed */
        i64 c = W->wcnt[W->word[p]], left = prv[p], right = nxt[r];
        if (left >= 0) {
            i64 x = left == last ? b : sym[left]; /* after the previous occurrence: (b, a) goes, (new, new) comes */
            if (lose(P, x, a, c)) return -3;
            if (gain(P, left == last ? new : x, new, left, c, step)) return -1;
        }
        /* (b, right) goes and (new, right) comes, unless an occurrence starts at `right` (it does this then) */
        if (right >= 0 && !(sym[right] == a && nxt[right] >= 0 && sym[nxt[right]] == b)) {
            if (lose(P, b, sym[right], c)) return -3;
            if (gain(P, new, sym[right], p, c, step)) return -1;
        }
        sym[p] = (i32) new, sym[r] = -1, nxt[p] = (i32)right;
        if (right >= 0) prv[right] = (i32)p;
        last = p;
    }
    return 0;
}

/* Up to num_merges merges of the words data[wstart[w] .. wstart[w + 1]) (bytes; each word at least 2 long) counted
 * wcnt[w] times; merge k is (merges[2k], merges[2k + 1]). progress[0] holds the merges done so far (read by another
 * thread for a progress bar). Returns the number of merges, -1 when out of memory, -2 when the words hold 2^31 / 3
 * bytes or more (positions and position-list nodes, at most 3 a byte, are int32), -3 if its bookkeeping broke. */
EXPORT i64 bpe_merge_words(const uint8_t *data, const i64 *wstart, const i64 *wcnt, i64 n_words, i64 num_merges,
                    i64 *merges, volatile i64 *progress) {
    i64 n_syms = wstart[n_words];
    if (n_syms >= INT32_MAX / 3) return -2;
    if (num_merges <= 0) return 0;
    /* the pair table and the slots start small and double as pairs appear (words are no bound on pairs) */
    i64 result = -1, n_tok_max = 256 + num_merges, tcap = 1024, cap = 1024, buf_cap = 1024, step = 0;
    while (tcap < 2 * n_tok_max) tcap *= 2;
    size_t n32 = (size_t)(n_syms + 1) * sizeof(i32);
    Tokens tok = {.off = filled(n_tok_max, 0), .len = filled(n_tok_max, 1), .table = filled(tcap, -1),
                  .data = malloc(4096), .data_cap = 4096, .used = 256, .n_tok = 256, .tmask = tcap - 1};
    Pairs P = {.ht_keys = filled(4 * cap, -1), .ht_vals = filled(4 * cap, 0), .ht_cap = 4 * cap,
               .pa = malloc(cap * sizeof(i64)), .pb = malloc(cap * sizeof(i64)), .pcnt = malloc(cap * sizeof(i64)),
               .sstamp = malloc(cap * sizeof(i64)), .head = malloc(cap * sizeof(i32)),
               .tail = malloc(cap * sizeof(i32)), .slot_cap = cap, .node_pos = malloc(n32), .node_next = malloc(n32),
               .node_cap = n_syms + 1, .touched = filled(1024, 0), .touched_cap = 1024};
    Words W = {.sym = malloc(n32), .prv = malloc(n32), .nxt = malloc(n32), .word = malloc(n32), .wcnt = wcnt};
    Heap H = {.c = filled(1024, 0), .s = filled(1024, 0), .cap = 1024};
    i32 *buf = malloc((size_t)buf_cap * sizeof(i32));
    if (!tok.off || !tok.len || !tok.table || !tok.data || !P.ht_keys || !P.ht_vals || !P.pa || !P.pb || !P.pcnt ||
        !P.sstamp || !P.head || !P.tail || !P.node_pos || !P.node_next || !P.touched || !W.sym || !W.prv || !W.nxt ||
        !W.word || !H.c || !H.s || !buf)
        goto done;
    for (i64 t = 0; t < 256; t++) {
        tok.off[t] = t;
        tok.data[t] = (uint8_t)t;
        tok.table[tok_slot(&tok, t, 1)] = t;
    }
    /* the positions, and every pair of every word (as gained in "step -1") */
    for (i64 w = 0; w < n_words; w++)
        for (i64 p = wstart[w]; p < wstart[w + 1]; p++) {
            W.sym[p] = data[p], W.word[p] = (i32)w;
            W.prv[p] = p > wstart[w] ? (i32)(p - 1) : -1;
            W.nxt[p] = p + 1 < wstart[w + 1] ? (i32)(p + 1) : -1;
            if (p > wstart[w] && gain(&P, data[p - 1], data[p], p - 1, wcnt[w], -1)) goto done;
        }
    for (; step <= num_merges; step++) {
        if (push_touched(&H, &P, &tok)) goto done; /* the pairs whose counts went up (at first: all of them) */
        *progress = step;
        i64 best = step < num_merges ? pop_best(&H, &P, &tok) : -1;
        if (best < 0) break;
        i64 a = P.pa[best], b = P.pb[best], new = make_token(&tok, a, b), n;
        merges[2 * step] = a, merges[2 * step + 1] = b;
        if (new < 0 || (n = take_positions(&P, best, &buf, &buf_cap)) < 0) goto done;
        int failed = merge_at(&W, &P, buf, n, a, b, new, step);
        if (failed) {
            result = failed == -3 ? -3 : -1;
            goto done;
        }
        P.pcnt[best] = 0;
    }
    result = step;
done:
    free(tok.off), free(tok.len), free(tok.table), free(tok.data), free(P.ht_keys), free(P.ht_vals), free(P.pa);
    free(P.pb), free(P.pcnt), free(P.sstamp), free(P.head), free(P.tail), free(P.node_pos), free(P.node_next);
    free(P.touched), free(W.sym), free(W.prv), free(W.nxt), free(W.word), free(H.c), free(H.s), free(buf);
    return result;
}
