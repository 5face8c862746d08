"""The plain reference of the tokenizer's encoding: short, slow, obviously right. It is the oracle of the parity
tests of the fast engine (`tokenizer.Tokenizer`), in the spirit of tiktoken's `_educational.py`.

    split_special_tokens(text, specials)  scan left to right, longest special token first at each position
    pretokenize(text, specials)           the pre-tokens and special tokens of a text, in order
    bpe_merge(word, ranks)                BPE of one pre-token (bytes -> list of tokens)
    encode(text, vocab, merges, specials) the ids of a text

BPE of one pre-token, the textbook way: start from its single bytes; while some adjacent pair is in the merge
list, merge the leftmost occurrence of the pair with the lowest rank (its position in the merge list). It keeps
the pairs in a heap keyed by (rank, position) over a linked list of parts, so a pre-token of n bytes costs
O(n log n), not O(n^2): a million-byte run of one letter stays cheap enough for tests and benchmarks.
"""

import heapq

from cs336_basics.pretokenize import GPT2_RE


def split_special_tokens(text: str, specials: list[str]) -> list[tuple[str, bool]]:
    """[(part, is_special)] covering `text`: at each position the longest special token that starts there is
    taken, else the character joins the current ordinary part. Empty ordinary parts are left out."""
    by_length = sorted(set(specials), key=len, reverse=True)
    parts: list[tuple[str, bool]] = []
    start = i = 0
    while i < len(text):
        special = next((s for s in by_length if text.startswith(s, i)), None)
        if special is None:
            i += 1
            continue
        if start < i:
            parts.append((text[start:i], False))
        parts.append((special, True))
        i = start = i + len(special)
    if start < len(text):
        parts.append((text[start:], False))
    return parts


def pretokenize(text: str, specials: list[str] = ()) -> list[str]:
    """The pre-tokens of `text` (GPT-2's pattern on each ordinary part) with its special tokens, in order."""
    out: list[str] = []
    for part, is_special in split_special_tokens(text, list(specials)):
        out.extend([part] if is_special else GPT2_RE.findall(part))
    return out


def bpe_merge(word: bytes, ranks: dict[tuple[bytes, bytes], int]) -> list[bytes]:
    """BPE of one pre-token: merge the lowest-rank adjacent pair, leftmost on ties, until no pair has a rank."""
    parts = [word[i : i + 1] for i in range(len(word))]
    right = list(range(1, len(parts) + 1))  # linked list: index of the next live part (len(parts): none)
    left = list(range(-1, len(parts) - 1))
    alive = [True] * len(parts)
    heap = [(ranks[p], i) for i, p in enumerate(zip(parts, parts[1:], strict=False)) if p in ranks]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = right[i]
        # stale entry: its left part was merged away, or either part has changed since it was pushed
        if not alive[i] or j >= len(parts) or ranks.get((parts[i], parts[j])) != rank:
            continue
        parts[i] += parts[j]
        alive[j] = False
        right[i] = right[j]
        if right[i] < len(parts):
            left[right[i]] = i
        for a in (left[i], i):
            if a >= 0 and right[a] < len(parts):
                pair_rank = ranks.get((parts[a], parts[right[a]]))
                if pair_rank is not None:
                    heapq.heappush(heap, (pair_rank, a))
    return [p for p, live in zip(parts, alive, strict=True) if live]


def encode(
    text: str, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], specials: list[str] = ()
) -> list[int]:
    """The token ids of `text`: special tokens by their id (appended to the vocabulary when missing, in order),
    every other pre-token by `bpe_merge`. The lowest id wins when a token appears twice in `vocab`."""
    token_id = {}
    for i in sorted(vocab, reverse=True):
        token_id[vocab[i]] = i
    next_id = max(vocab, default=-1) + 1
    for special in specials:
        if special.encode("utf-8") not in token_id:
            token_id[special.encode("utf-8")] = next_id
            next_id += 1
    ranks: dict[tuple[bytes, bytes], int] = {}
    for rank, pair in enumerate(merges):
        ranks.setdefault(pair, rank)
    ids = []
    for part, is_special in split_special_tokens(text, list(specials)):
        if is_special:
            ids.append(token_id[part.encode("utf-8")])
            continue
        for pretoken in GPT2_RE.findall(part):
            ids.extend(token_id[t] for t in bpe_merge(pretoken.encode("utf-8"), ranks))
    return ids
