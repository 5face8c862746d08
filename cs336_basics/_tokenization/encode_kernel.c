/* BPE of pre-tokens in C, built and loaded by cs336_basics/_tokenization/clib.py (checked against `merge_list`,
 * `merge_heap` and `tokenizer_reference.bpe_merge` in tests/test_bpe_encode.py):
 *
 * - bpe_encode_merge: one long pre-token in O(n log n) time and ~4.5-5 bytes per byte, `encode_kernel.merge_heap`'s
 *   merges (called by `encode_kernel.Merges.merge_array`);
 * - bpe_encode_words: many pre-tokens in one call, each short one by `merge_list`'s scan (tiktoken's loop), each
 *   long one by bpe_encode_merge (called by `encode_kernel.Merges.bpe_bytes`: a block's new pre-tokens at once);
 * - bpe_encode_ascii_pieces: many ASCII pieces in one call, each pre-tokenized as GPT-2's pattern does (checked
 *   against `pretokenize.GPT2_ASCII_RE`), then BPE of each pre-token (called by `Merges.bpe_ascii_pieces`).
 *
 * The rule: while some adjacent pair of parts has a merge, merge the pair of lowest rank, the leftmost on ties.
 *
 * Legend: the pre-token's parts live in `ids` (int32, one slot per byte, modified in place): a part starting at byte
 * x holds its token id at ids[x] and spans lengths[ids[x]] bytes, so the next part starts at x + lengths[ids[x]]; the
 * slots inside a part are negative, and the last slot of a part of 2+ bytes holds -(x + 2), so the part before any
 * part is found in O(1) too (no link arrays). v(x): the rank of the merge of the pair at part x (x and the next
 * part), NONE when there is none. The next merge is the leftmost part with the lowest v, which is a *local minimum*:
 * v(x) < v(previous part) and v(x) <= v(next part). The heap holds (rank << 32 | x) for every local minimum (so a run
 * of one byte keeps it tiny) and entries gone stale, which are skipped when popped: a popped entry is merged only if
 * the pair at x still has that rank. `slots` is `chunk_table.IntMap`'s open-addressing table, rows of (pair key
 * a << shift | b, rank << shift | merged id), key -1 empty, hashed by Fibonacci hashing as IntMap does.
 */
#include <stdint.h>
#include <stdlib.h>

typedef int64_t i64;
typedef int32_t i32;

#ifdef _WIN32
#define EXPORT __declspec(dllexport)
#else
#define EXPORT
#endif

#define NONE ((i64)1 << 62)
#define LOW32 (((i64)1 << 32) - 1)

typedef struct {
    i32 *ids;
    i64 n;
    const i64 *slots;
    int bits, shift;
    const i32 *lengths;
} Parts;

/* IntMap.get of one key: its value, or -1. */
static i64 get(const Parts *P, i64 key) {
    i64 mask = ((i64)1 << P->bits) - 1;
    i64 pos = (i64)(((uint64_t)key * 0x9E3779B97F4A7C15ull) >> (64 - P->bits));
    for (;;) {
        i64 k = P->slots[2 * pos];
        if (k == key) return P->slots[2 * pos + 1];
        if (k < 0) return -1;
        pos = (pos + 1) & mask;
    }
}

/* v(x): the rank of the pair at part x (x < 0 or x >= n: no part), or NONE. */
static i64 rank_at(const Parts *P, i64 x) {
    if (x < 0 || x >= P->n) return NONE;
    i64 a = P->ids[x], y = x + P->lengths[a];
    if (y >= P->n) return NONE;
    i64 v = get(P, (a << P->shift) | (i64)P->ids[y]);
    return v < 0 ? NONE : v >> P->shift;
}

/* The part before part x, or -1. */
static i64 prev_part(const Parts *P, i64 x) {
    if (x <= 0) return -1;
    i64 y = P->ids[x - 1];
    return y >= 0 ? x - 1 : -y - 2;
}

static void sift_down(i64 *heap, i64 size, i64 i) {
    i64 item = heap[i];
    for (;;) {
        i64 child = 2 * i + 1;
        if (child >= size) break;
        if (child + 1 < size && heap[child + 1] < heap[child]) child += 1;
        if (heap[child] >= item) break;
        heap[i] = heap[child];
        i = child;
    }
    heap[i] = item;
}

static i64 push(i64 *heap, i64 size, i64 item) {
    i64 i = size;
    while (i > 0) {
        i64 parent = (i - 1) >> 1;
        if (heap[parent] <= item) break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = item;
    return size + 1;
}

typedef struct {
    i64 *items, size, cap, alloc; /* cap: the size from which it is refilled (<= alloc, the room allocated) */
} Heap;

/* Fill the heap with every local minimum's entry and heapify it. Its capacity then leaves room for half as many
 * entries again plus 1/16 of the parts (refills are amortized O(1) a push); `room` > 0 (a test hook) leaves only
 * `room` entries of room instead. 0, or -1 when out of memory. */
static int fill_heap(const Parts *P, Heap *H, i64 room) {
    i64 size = 0, parts = 0, x = 0, v_before = NONE, v = rank_at(P, 0);
    while (x < P->n) {
        i64 y = x + P->lengths[P->ids[x]], v_after = rank_at(P, y);
        if (v < v_before && v <= v_after) {
            if (size == H->alloc) {
                i64 *grown = realloc(H->items, (size_t)(2 * H->alloc + 16) * sizeof(i64));
                if (!grown) return -1;
                H->items = grown, H->alloc = 2 * H->alloc + 16;
            }
            H->items[size++] = (v << 32) | x;
        }
        v_before = v, v = v_after, x = y;
        parts += 1;
    }
    i64 want = room > 0 ? size + room : size + size / 2 + parts / 16 + 16;
    if (H->alloc < want) {
        i64 *grown = realloc(H->items, (size_t)want * sizeof(i64));
        if (!grown) return -1;
        H->items = grown, H->alloc = want;
    }
    H->size = size, H->cap = room > 0 ? want : H->alloc;
    for (i64 k = size / 2 - 1; k >= 0; k--) sift_down(H->items, size, k);
    return 0;
}

/* BPE of the byte ids ids[0 .. n) (modified): the ids left after merging are moved to ids[0 .. returned count).
 * lengths[t]: the byte length of token t (a merge's token is its parts' bytes, so lengths add up). n < 2^31 - 2.
 * `room`: 0, or the test hook of fill_heap. *merged grows by one per merge (another thread may read it to show
 * progress: a merge joins two parts, so a pre-token of n bytes takes at most n - 1; the count is not atomic, so kernels
 * in several threads at once may undercount it). Returns the count, or -1 when out of memory. */
EXPORT i64 bpe_encode_merge(i32 *ids, i64 n, const i64 *slots, i64 bits, i64 shift, const i32 *lengths, i64 room,
                     volatile i64 *merged) {
    Parts P = {ids, n, slots, (int)bits, (int)shift, lengths};
    Heap H = {malloc(16 * sizeof(i64)), 0, 0, 16};
    i64 mask = ((i64)1 << shift) - 1;
    if (!H.items || fill_heap(&P, &H, room)) return free(H.items), -1;
    while (H.size) {
        i64 top = H.items[0];
        H.items[0] = H.items[--H.size];
        sift_down(H.items, H.size, 0);
        i64 i = top & LOW32, a = ids[i];
        if (a < 0) continue;
        i64 j = i + lengths[a];
        if (j >= n) continue;
        i64 b = ids[j], v = get(&P, (a << shift) | b);
        if (v < 0 || (v >> shift) != (top >> 32)) continue; /* stale: the pair changed since this entry was pushed */
        i64 k = j + lengths[b];                               /* the part after the merged one */
        ids[j] = -1;
        ids[i] = (i32)(v & mask);
        ids[k - 1] = (i32)(-(i + 2));
        *merged += 1;
        if (H.size + 4 > H.cap) { /* full of stale entries: refill (it then holds every local minimum already) */
            if (fill_heap(&P, &H, room)) return free(H.items), -1;
            continue;
        }
        /* v changed at p (pair p, new part) and i (new part, k); so the parts whose local-minimum status can change
         * are pp, p, i and k. Push those that are local minima now and did not already have a valid entry. */
        i64 p = prev_part(&P, i), pp = prev_part(&P, p);
        i64 vi = rank_at(&P, i), vp = rank_at(&P, p), vk = rank_at(&P, k), vpp = rank_at(&P, pp);
        if (vi < vp && vi <= vk) H.size = push(H.items, H.size, (vi << 32) | i);
        if (vp < vpp && vp <= vi) H.size = push(H.items, H.size, (vp << 32) | p);
        if (k < n && vk < vi && vk <= rank_at(&P, k + lengths[ids[k]])) {
            i64 old = get(&P, (b << shift) | (i64)ids[k]); /* v(j) before: was k a minimum already? */
            if (old >= 0 && vk >= (old >> shift)) H.size = push(H.items, H.size, (vk << 32) | k);
        }
        if (vpp <= vp && vpp < rank_at(&P, prev_part(&P, pp))) {
            i64 old = get(&P, ((i64)ids[p] << shift) | a); /* v(p) before: was pp a minimum already? */
            if (old >= 0 && vpp > (old >> shift)) H.size = push(H.items, H.size, (vpp << 32) | pp);
        }
    }
    free(H.items);
    i64 w = 0;
    for (i64 x = 0; x < n; x += lengths[ids[w - 1]]) ids[w++] = ids[x]; /* the parts left, moved to the front */
    return w;
}

#define LIST_MAX 256 /* words shorter than this merge by the O(n^2) scan; longer ones by the heap above */

/* v of the pair (a, b): rank << shift | merged id, or NONE. */
static i64 pair_value(const Parts *P, i64 a, i64 b) {
    i64 v = get(P, (a << P->shift) | b);
    return v < 0 ? NONE : v;
}

/* BPE of one word whose byte ids are ids[0 .. n), in place: the count of ids left, or -1 when out of memory. A short
 * word merges as `merge_list` does (tiktoken's loop): the leftmost lowest pair value, then only its neighbours'
 * values change; a long one by bpe_encode_merge. */
static i64 merge_word(const Parts *P, i32 *ids, i64 n) {
    if (n >= LIST_MAX) {
        i64 unused = 0;
        return bpe_encode_merge(ids, n, P->slots, P->bits, P->shift, P->lengths, 0, &unused);
    }
    i64 mask = ((i64)1 << P->shift) - 1, values[LIST_MAX];
    for (i64 x = 0; x + 1 < n; x++) values[x] = pair_value(P, ids[x], ids[x + 1]);
    while (n > 1) {
        i64 best = NONE, i = -1;
        for (i64 x = 0; x + 1 < n; x++)
            if (values[x] < best) best = values[x], i = x;
        if (i < 0) break;
        ids[i] = (i32)(best & mask);
        for (i64 x = i + 1; x + 1 < n; x++) ids[x] = ids[x + 1];
        for (i64 x = i; x + 2 < n; x++) values[x] = values[x + 1];
        n -= 1;
        if (i > 0) values[i - 1] = pair_value(P, ids[i - 1], ids[i]);
        if (i + 1 < n) values[i] = pair_value(P, ids[i], ids[i + 1]);
    }
    return n;
}

/* BPE of each word data[o_w .. o_w + lengths[w]) (o_w: the lengths before it added up; every byte has an id,
 * byte_ids[byte] >= 0, checked by the caller). The ids of all words are written to out[] in order (it has room for
 * one id per byte: BPE never makes more ids than bytes) and counts[w] = the ids of word w. Returns the ids written,
 * or -1 when out of memory. */
EXPORT i64 bpe_encode_words(const uint8_t *data, const i64 *lengths, i64 num_words, const i32 *byte_ids,
                            const i64 *slots, i64 bits, i64 shift, const i32 *token_lengths, i32 *out, i64 *counts) {
    Parts P = {0, 0, slots, (int)bits, (int)shift, token_lengths};
    i64 written = 0, read = 0;
    for (i64 w = 0; w < num_words; w++) {
        i64 n = lengths[w];
        for (i64 x = 0; x < n; x++) out[written + x] = byte_ids[data[read + x]];
        read += n;
        n = merge_word(&P, out + written, n);
        if (n < 0) return -1;
        counts[w] = n;
        written += n;
    }
    return written;
}

/* GPT-2's pre-tokenization of ASCII text, `pretokenize.GPT2_ASCII_RE`'s matches: '(?:[sdmt]|ll|ve|re) | ?letters |
 * ?digits | ?others (neither whitespace, letter nor digit) | whitespace not followed by a non-space | whitespace. */
static int is_space(uint8_t c) { return c == ' ' || (c >= 9 && c <= 13); }
static int is_letter(uint8_t c) { return (c | 32) >= 'a' && (c | 32) <= 'z'; }
static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static int is_other(uint8_t c) { return !is_space(c) && !is_letter(c) && !is_digit(c); }

/* The end of the pre-token that starts at s[i] in the ASCII text s[0 .. n). */
static i64 pretoken_end(const uint8_t *s, i64 i, i64 n) {
    uint8_t c = s[i];
    if (c == '\'' && i + 1 < n) { /* a contraction: 's 'd 'm 't 'll 've 're */
        uint8_t d = s[i + 1], e = i + 2 < n ? s[i + 2] : 0;
        if (d == 's' || d == 'd' || d == 'm' || d == 't') return i + 2;
        if ((d == 'l' && e == 'l') || (d == 'v' && e == 'e') || (d == 'r' && e == 'e')) return i + 3;
    }
    i64 j = (c == ' ' && i + 1 < n && !is_space(s[i + 1])) ? i + 1 : i; /* one space may lead a run of a class */
    int (*same)(uint8_t) = is_letter(s[j]) ? is_letter : is_digit(s[j]) ? is_digit : is_other(s[j]) ? is_other : 0;
    if (same) {
        while (j < n && same(s[j])) j++;
        return j;
    }
    while (j < n && is_space(s[j])) j++; /* whitespace: all of it at the end, else all but the last (which then leads */
    return j == n || j - i < 2 ? j : j - 1; /* the next pre-token), and a single one alone */
}

/* The ids of each ASCII piece data[o_p .. o_p + lengths[p]) encoded on its own (GPT-2 pre-tokens, then BPE of each):
 * written to out[] in order, counts[p] = the ids of piece p; as bpe_encode_words otherwise. */
EXPORT i64 bpe_encode_ascii_pieces(const uint8_t *data, const i64 *lengths, i64 num_pieces, const i32 *byte_ids,
                                   const i64 *slots, i64 bits, i64 shift, const i32 *token_lengths, i32 *out,
                                   i64 *counts) {
    Parts P = {0, 0, slots, (int)bits, (int)shift, token_lengths};
    i64 written = 0;
    for (i64 p = 0; p < num_pieces; data += lengths[p], p++) {
        i64 n = lengths[p], before = written;
        for (i64 i = 0, end; i < n; i = end) {
            end = pretoken_end(data, i, n);
            for (i64 x = i; x < end; x++) out[written + x - i] = byte_ids[data[x]];
            i64 m = merge_word(&P, out + written, end - i);
            if (m < 0) return -1;
            written += m;
        }
        counts[p] = written - before;
    }
    return written;
}
