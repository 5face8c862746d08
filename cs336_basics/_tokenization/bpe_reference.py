"""The textbook byte-level BPE trainer: the algorithm of `bpe.train_bpe`, written as plainly as possible.

It is the oracle of the fast trainer's parity tests (tests/test_train_bpe.py, with Hypothesis and the corpora in
tests/fixtures/bpe/): `train_bpe_reference(text, vocab_size, special_tokens)` must equal
`bpe.train_bpe(path_of(text), vocab_size, special_tokens)`, merges in order and vocabulary. It holds the whole text
and recounts every pair of every pre-token at every step, so it is for small inputs only.

1. Special tokens are hard boundaries: the text is split on them, the longest first (so with `<|a|>` and `<|a|>x`
   both special, `<|a|>x` is one boundary), and they are removed.
2. Each piece is pre-tokenized with GPT-2's pattern; BPE works on the counts of distinct pre-tokens, each a tuple of
   byte strings (one per symbol), starting from single bytes.
3. Each step merges the most frequent adjacent pair, counted over pre-tokens times their counts; ties go to the
   lexicographically greatest pair `(bytes_a, bytes_b)`. Training stops at `vocab_size` or when no pair is left.
4. The vocabulary: the special tokens get ids 0..k-1, the 256 single bytes k..k+255, then one token per merge.
"""

from collections import Counter

import regex

from cs336_basics.pretokenize import GPT2_PATTERN


def count_pretokens_reference(text: str, special_tokens: list[str]) -> Counter:
    """Counts of the distinct pre-tokens (UTF-8 bytes) of `text`, split first on the special tokens."""
    pieces = [text]
    if special_tokens:
        longest_first = sorted(special_tokens, key=len, reverse=True)
        pieces = regex.split("|".join(regex.escape(t) for t in longest_first), text)
    counts: Counter = Counter()
    for piece in pieces:
        for match in regex.findall(GPT2_PATTERN, piece):
            counts[match.encode("utf-8")] += 1
    return counts


def merge_reference(counts: dict[bytes, int], num_merges: int) -> list[tuple[bytes, bytes]]:
    """Up to `num_merges` merges of the pre-tokens `counts` (fewer when no pair is left), in order."""
    words = Counter()
    for word, count in counts.items():
        words[tuple(bytes([b]) for b in word)] += count
    merges = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # the most frequent, then the greatest (bytes_a, bytes_b)
        merges.append(best)
        merged: Counter = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def train_bpe_reference(
    text: str, vocab_size: int, special_tokens: list[str]
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """`(vocab, merges)` of `text`, as `bpe.train_bpe` returns them for a file holding `text`."""
    merges = merge_reference(count_pretokens_reference(text, special_tokens), vocab_size - 256 - len(special_tokens))
    tokens = [t.encode("utf-8") for t in special_tokens] + [bytes([b]) for b in range(256)] + [a + b for a, b in merges]
    return dict(enumerate(tokens)), merges
