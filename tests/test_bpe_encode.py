"""BPE of one pre-token (cs336_basics._tokenization.encode_kernel and its C kernel) against the plain reference
(tokenizer_reference.bpe_merge), and long hostile runs through every encoding path against tiktoken."""

import itertools
import random
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cs336_basics._tokenization import encode_kernel, tokenizer_reference
from cs336_basics.pretokenize import GPT2_RE
from cs336_basics.tokenizer import Tokenizer

from .conftest import NEEDS_CC
from .test_tokenizer import EOT, _cached_gpt2_pair

HOSTILE = ["^", "0", "a", "'s", " ", "\n", "ab", "=-", "日", "\u3000", "é"]


def random_merges(seed: int, count: int) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """A byte vocabulary plus `count` merges of random existing tokens over a few letters, so long runs of them
    have many different merges (some tokens made twice: the first id is kept)."""
    rng = random.Random(seed)
    vocab = {i: bytes([i]) for i in range(256)}
    tokens = [b"a", b"b", b"c", b" "]
    merges = []
    for _ in range(count):
        a, b = rng.choice(tokens), rng.choice(tokens)
        if len(a + b) > 12:
            continue
        merges.append((a, b))
        if a + b not in tokens:
            tokens.append(a + b)
            vocab[len(vocab)] = a + b
    return vocab, merges


@pytest.fixture(scope="module")
def small():
    vocab, merges = random_merges(0, 300)
    return Tokenizer(vocab, merges), vocab, merges


def _ranks(merges):
    ranks = {}
    for rank, pair in enumerate(merges):
        ranks.setdefault(pair, rank)
    return ranks


def _all_merges(tok: Tokenizer, word: bytes, room: int = 0) -> list[tuple[int, ...]]:
    """The word's ids by each implementation: list, heap, C kernel (called directly, at any length; `room`: its
    test hook)."""
    tables = tok._engine.merges
    ids = [tables.byte_ids[b] for b in word]
    out = [
        encode_kernel.merge_list(list(ids), tables.pair_table, tables.shift),
        encode_kernel.merge_heap(list(ids), tables.pair_table, tables.shift),
    ]
    if encode_kernel._kernel() is not None:
        array = np.array(ids, dtype=np.int32)
        out.append(tuple(encode_kernel.merge_kernel(array, tables.pair_map, tables.shift, tables.token_lengths, room)))
    return out


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abc ", max_size=80))
def test_every_merge_equals_reference_on_random_merges(small, word):
    tok, vocab, merges = small
    token_id = {t: i for i, t in sorted(vocab.items(), reverse=True)}
    raw = word.encode()
    expected = tuple(token_id[t] for t in tokenizer_reference.bpe_merge(raw, _ranks(merges)))
    for got in _all_merges(tok, raw):
        assert got == expected


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60) | st.sampled_from(HOSTILE).map(lambda c: c * 300))
def test_every_merge_equals_reference_on_gpt2(word):
    tok, _ = _cached_gpt2_pair()
    raw = word.encode()
    expected = tuple(tok._token_to_id[t] for t in tokenizer_reference.bpe_merge(raw, _ranks(tok.merges)))
    for got in _all_merges(tok, raw):
        assert got == expected


def test_kernel_rebuilds_its_heap(small):
    """Long inputs fill the kernel's heap with stale entries, so it rebuilds the heap, often: still exact."""
    tok, vocab, merges = small
    rng = random.Random(1)
    for n in (2, 3, 50, 2000, 20000):
        for word in (bytes(rng.choice(b"abc ") for _ in range(n)), b"a" * n, b"ab" * n):
            got = _all_merges(tok, word)
            assert got[0] == got[1] == got[-1]


def test_reference_encode_equals_tiktoken():
    tok, oracle = _cached_gpt2_pair()
    text = "Hello, world! 'twas 1234 déjà vu<|endoftext|>\n\n  x" + "a" * 500
    assert tokenizer_reference.encode(text, tok.vocab, tok.merges, [EOT]) == oracle.encode(text, allowed_special="all")


@pytest.fixture(params=["heap", "c"])
def engine(request, monkeypatch):
    """Run the long-word path with the Python heap (the kernel off) or with the C kernel (from KERNEL_MIN bytes)."""
    if request.param == "heap":
        monkeypatch.setattr(encode_kernel, "KERNEL_MIN", 1 << 62)
    elif encode_kernel._kernel() is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    return request.param


@pytest.mark.parametrize("c", HOSTILE)
def test_catastrophically_repetitive(engine, c):
    """tiktoken's test of the same name: runs of 10,000 of one piece, alone, after a space, before a newline;
    every path (encode, encode_to_array, encode_iterable in small chunks) gives tiktoken's ids."""
    tok, oracle = _cached_gpt2_pair()
    tok._engine.cache.clear()
    tok._engine.cache.update(tok._engine.special_entries)
    tok._engine.table.clear()
    tok._engine.pretoken_table.clear()
    for text in (c * 10_000, " " + c * 10_000, c * 10_000 + "\n", "x" * 3 + c * 10_000 + EOT + c * 5):
        expected = oracle.encode(text, allowed_special="all")
        assert tok.encode(text) == expected
        assert tok.encode_to_array(text).tolist() == expected
        chunks = [text[i : i + 700] for i in range(0, len(text), 700)]
        assert list(tok.encode_iterable(chunks, buffer_size=1000)) == expected
        assert tok.decode(expected) == text


def test_long_runs_are_not_quadratic(engine):
    """200,000 letters: quadratic merging took minutes (8,000 took 0.9 s); the heap takes about a second."""
    tok, _ = _cached_gpt2_pair()
    t0 = time.perf_counter()
    ids = tok.encode("a" * 200_000)
    assert time.perf_counter() - t0 < 30
    assert tok.decode(ids) == "a" * 200_000


@pytest.mark.parametrize("seed", range(6))
def test_long_words_on_random_vocabularies(seed):
    """Words of up to 2,000 bytes over 1-4 letters, on random merge lists that make some tokens twice (so a part and
    its neighbour can hold the same token through different merges, and ranks tie across parts): every
    implementation gives the reference's ids. (Hypothesis's short words and GPT-2's vocabulary missed a kernel
    that dropped a local minimum tied with its right neighbour.)"""
    vocab, merges = random_merges(seed, 400)
    tok = Tokenizer(vocab, merges)
    token_id = {t: i for i, t in sorted(vocab.items(), reverse=True)}
    rng = random.Random(seed)
    for _ in range(12):
        alphabet = rng.choice([b"abc ", b"ab", b"a", b"aab", b"abcc  ", b"aaab"])
        word = bytes(rng.choice(alphabet) for _ in range(rng.choice([60, 300, 2000])))
        expected = tuple(token_id[t] for t in tokenizer_reference.bpe_merge(word, _ranks(merges)))
        for got in _all_merges(tok, word):
            assert got == expected


def test_kernel_refills_a_full_heap_exactly(small):
    """The kernel's heap rarely fills (it holds local minima only, and stale entries pop early; no input of the suite
    or of the benchmarks fills it), so its test hook forces the refill: the heap is left 2 entries of room after each
    fill, so every merge refills it and must find the next merge among the local minima the refill lists."""
    if encode_kernel._kernel() is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    tok, vocab, merges = small
    rng = random.Random(4)
    for word in (bytes(rng.choice(b"abc ") for _ in range(400)), b"a" * 300, b"ab" * 150 + b"c", b"cab " * 80):
        got = _all_merges(tok, word, room=2)
        assert got[0] == got[1] == got[2]


def test_long_words_among_many_new_words(engine):
    """The batch path (many new pre-tokens at once) sends long ones to the heap and keeps the order."""
    tok, oracle = _cached_gpt2_pair()
    rng = random.Random(2)
    words = [" " + "".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 12))) for _ in range(600)]
    for i in range(0, 600, 100):
        words[i] = " " + rng.choice("xyz") * rng.randint(1200, 3000)
    text = "".join(words)
    assert tok._engine.merges.bpe_batch(words) == [tok._engine.merges.bpe(w) for w in words]
    assert tok.encode_to_array(text).tolist() == oracle.encode(text)


def test_huge_pieces_take_their_own_path_exactly(engine, monkeypatch):
    """Pieces and pre-tokens of encoder._HUGE_BYTES+ bytes skip the caches (the longest pre-tokens go to the
    kernel as int32 ids, with no other copy held), between ordinary pieces; made 300 bytes here so that short texts
    take that path, with runs of many pre-tokens, of one, and several per block: ids equal tiktoken's."""
    from cs336_basics._tokenization import encoder

    monkeypatch.setattr(encoder, "_HUGE_BYTES", 300)
    tok, oracle = _cached_gpt2_pair()
    rng = random.Random(3)
    mixed = "".join(rng.choice(["a", "b1", "=", "'s", "日", "é", "xyz"]) for _ in range(3000))
    texts = [
        "a" * 5000,
        "hello world, " * 200 + "x1=" * 400 + " tail" + EOT + "日本" * 300 + " end " + "z" * 400,
        " " + "é" * 3000 + "!" * 500 + "\n" + "q" * 299 + " " + "r" * 300,
        mixed + " " + mixed[::-1] + " the end",
    ]
    calls = []
    huge_piece = encoder.Encoder._encode_huge_piece
    monkeypatch.setattr(encoder.Encoder, "_encode_huge_piece", lambda *a: calls.append(a[3]) or huge_piece(*a))
    for text in texts:
        assert len(text) >= encoder._TABLE_MIN_CHARS  # (the block path)
        expected = oracle.encode(text, allowed_special="all")
        assert tok.encode(text) == expected
        assert tok.encode_to_array(text).tolist() == expected
    assert len(calls) >= 2 * 8 and max(calls) >= 5000  # (each text has huge pieces, of all kinds)


def test_without_a_c_compiler_long_pre_tokens_merge_in_python(monkeypatch):
    """No C compiler: a warning says why once, and long runs still get tiktoken's ids (through merge_heap)."""
    from cs336_basics._tokenization import clib

    def unavailable(source):
        raise clib.EngineUnavailable("no C compiler found (set CC, or install cc, gcc or clang)")

    monkeypatch.setattr(encode_kernel, "_KERNEL", [])
    monkeypatch.setattr(encode_kernel, "load_library", unavailable)
    with pytest.warns(UserWarning, match="merged in Python .* the C kernel is unavailable: no C compiler found"):
        assert encode_kernel._kernel() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert encode_kernel._kernel() is None  # (said once per process)
    heap_lengths = []
    real_heap = encode_kernel.merge_heap
    monkeypatch.setattr(
        encode_kernel, "merge_heap", lambda parts, *a: heap_lengths.append(len(parts)) or real_heap(parts, *a)
    )
    tok, oracle = _cached_gpt2_pair()
    for text in ("a" * 5003, " " + "=-" * 3001 + "\n", "x" + "日" * 2001):
        assert tok.encode_to_array(text).tolist() == tok.encode(text) == oracle.encode(text)
    assert max(heap_lengths) >= 5003  # (the long pre-tokens went through the Python heap)


def test_a_missing_byte_error_shows_a_long_pre_token_cut():
    """A vocabulary without some byte: the error names the byte and shows a long pre-token cut (length and prefix),
    not megabytes of it."""
    vocab = {i: bytes([i]) for i in range(256) if i != ord("b")}
    tok = Tokenizer(vocab, [])
    with pytest.raises(ValueError, match=r"cannot encode 'a{40}' \.\.\. \(5,001 bytes\): byte b'b'") as info:
        tok.encode("a" * 5000 + "b")
    assert len(str(info.value)) < 300


# --------------------------------------------------------------------------------------------------------------------
# Many pre-tokens at once: the C batch kernel (`bpe_encode_words`) and its numpy fallback (`Merges.bpe_rounds`)


def _batch_ids(tok: Tokenizer, words: list[bytes]) -> list[list[list[int]]]:
    """Each word's ids by every batch implementation: the numpy rounds, then the C kernel (where it can be built)."""
    tables = tok._engine.merges
    lengths = np.array(list(map(len, words)), dtype=np.int64)
    data = np.frombuffer(b"".join(words), dtype=np.uint8)
    runs = [tables.bpe_rounds(data, lengths)]
    if encode_kernel.batch_kernel() is not None:
        runs.append(
            encode_kernel.call_batch_kernel(encode_kernel.batch_kernel().bpe_encode_words, tables, data, lengths)
        )
    out = []
    for ids, counts in runs:
        assert ids.dtype == np.int64 and counts.tolist() == [len(x) for x in np.split(ids, np.cumsum(counts)[:-1])]
        out.append([x.tolist() for x in np.split(ids, np.cumsum(counts)[:-1])])
    return out


def _expected(tok: Tokenizer, vocab, merges, words: list[bytes]) -> list[list[int]]:
    token_id = {t: i for i, t in sorted(vocab.items(), reverse=True)}
    return [[token_id[t] for t in tokenizer_reference.bpe_merge(w, _ranks(merges))] for w in words]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abc ", min_size=1, max_size=40), min_size=1, max_size=30))
def test_batch_kernel_equals_reference_on_random_merges(small, words):
    tok, vocab, merges = small
    raw = [w.encode() for w in words]
    expected = _expected(tok, vocab, merges, raw)
    for got in _batch_ids(tok, raw):
        assert got == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30) | st.sampled_from(HOSTILE).map(lambda c: c * 300), max_size=20))
def test_batch_kernel_equals_reference_on_gpt2(words):
    """GPT-2's vocabulary, any text, and runs of 300+ bytes in the batch (the kernel merges those with its heap)."""
    tok, _ = _cached_gpt2_pair()
    raw = [w.encode() for w in words if w]
    if not raw:
        return
    token_id, ranks = _reference_tables(tok)
    expected = [[token_id[t] for t in tokenizer_reference.bpe_merge(w, ranks)] for w in raw]
    for got in _batch_ids(tok, raw):
        assert got == expected


@pytest.mark.parametrize("seed", range(4))
def test_batch_kernel_on_random_vocabularies_and_lengths(seed):
    """Words of 1 to 3,000 bytes (either side of the kernel's 256-byte switch to its heap) on random merge lists that
    make some tokens twice, many per batch, in order."""
    vocab, merges = random_merges(seed, 400)
    tok = Tokenizer(vocab, merges)
    rng = random.Random(seed)
    words = []
    for _ in range(60):
        alphabet = rng.choice([b"abc ", b"ab", b"a", b"aab", b"abcc  "])
        words.append(bytes(rng.choice(alphabet) for _ in range(rng.choice([1, 2, 7, 60, 255, 256, 257, 3000]))))
    expected = _expected(tok, vocab, merges, words)
    for got in _batch_ids(tok, words):
        assert got == expected


ASCII_TRICKY = " \t\n\r\x0b\x0c\x1c\x1f'sdmtlvreaZz09!.-_"  # (\x1c-\x1f: whitespace to `re`, not to GPT-2's \s)


def _reference_tables(tok: Tokenizer) -> tuple[dict[bytes, int], dict[tuple[bytes, bytes], int]]:
    """(token -> lowest id, pair -> rank) of the tokenizer's vocabulary, made once per tokenizer."""
    if not hasattr(tok, "_test_reference_tables"):
        token_id = {t: i for i, t in sorted(tok.vocab.items(), reverse=True)}
        tok._test_reference_tables = token_id, _ranks(tok.merges)
    return tok._test_reference_tables


def _reference_ids(tok: Tokenizer, pieces: list[str]) -> list[list[int]]:
    """Each piece's ids by the reference (GPT-2's pattern, then `bpe_merge` of each pre-token), its tables made once
    per tokenizer."""
    token_id, ranks = _reference_tables(tok)
    return [
        [token_id[t] for pre in GPT2_RE.findall(p) for t in tokenizer_reference.bpe_merge(pre.encode(), ranks)]
        for p in pieces
    ]


def _ascii_pieces_ids(tok: Tokenizer, pieces: list[str]) -> list[list[int]]:
    """Each piece's ids by the C kernel that pre-tokenizes and merges ASCII pieces in one call."""
    raw = [p.encode("ascii") for p in pieces]
    lengths = np.array(list(map(len, raw)), dtype=np.int64)
    ids, counts = tok._engine.merges.bpe_ascii_pieces(np.frombuffer(b"".join(raw), dtype=np.uint8), lengths)
    assert ids.dtype == np.int64 and int(counts.sum()) == ids.size
    return [x.tolist() for x in np.split(ids, np.cumsum(counts)[:-1])]


@NEEDS_CC
def test_ascii_pieces_kernel_on_every_short_string():
    """Every string of up to 4 characters over the characters where GPT-2's pattern branches (contractions, a space
    before a class, whitespace runs before a non-space, the end): the C kernel's ids equal the reference's, each
    string encoded on its own. GPT-2's merges join a space to what follows, so a pre-token cut in the wrong place
    changes the ids."""
    tok, _ = _cached_gpt2_pair()
    alphabet = " \n'sla1."
    strings = []
    for n in range(1, 5):
        strings += ["".join(t) for t in itertools.product(alphabet, repeat=n)]
    assert _ascii_pieces_ids(tok, strings) == _reference_ids(tok, strings)


@NEEDS_CC
@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=ASCII_TRICKY, min_size=1, max_size=40), min_size=1, max_size=20))
def test_ascii_pieces_kernel_equals_reference(small, pieces):
    """Any ASCII pieces (not only whitespace-then-non-space ones), on GPT-2's vocabulary and on random merges that
    join letters and spaces across pre-token boundaries (so a wrong cut shows)."""
    gpt2, _ = _cached_gpt2_pair()
    tok, vocab, merges = small
    assert _ascii_pieces_ids(gpt2, pieces) == _reference_ids(gpt2, pieces)
    assert _ascii_pieces_ids(tok, pieces) == _reference_ids(tok, pieces)


def test_without_a_c_compiler_batches_merge_in_numpy_silently(monkeypatch):
    """No C compiler: a block's new pieces are pre-tokenized by `re` and merged in numpy rounds, with no warning, and
    a long text still gets the reference's ids."""
    from cs336_basics._tokenization import clib

    def unavailable(source):
        raise clib.EngineUnavailable("no C compiler found (set CC, or install cc, gcc or clang)")

    monkeypatch.setattr(encode_kernel, "_BATCH", [])
    monkeypatch.setattr(encode_kernel, "load_library", unavailable)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert encode_kernel.batch_kernel() is None
    rounds = []
    real = encode_kernel.Merges.bpe_rounds
    monkeypatch.setattr(encode_kernel.Merges, "bpe_rounds", lambda self, *a: rounds.append(1) or real(self, *a))
    vocab, merges = random_merges(5, 300)
    tok = Tokenizer(vocab, merges)
    rng = random.Random(5)
    text = "".join(rng.choice(["a", "b", "c", " ", "ab", " abc", "\n"]) for _ in range(20_000))
    assert tok.encode(text) == tokenizer_reference.encode(text, vocab, merges, [])
    assert rounds  # (the numpy rounds ran)


@pytest.mark.parametrize("kernel", ["c", "none"])
def test_new_pieces_ascii_and_not_in_one_block(kernel, monkeypatch):
    """A fresh tokenizer's block with new pieces of both kinds (ASCII ones go to the C kernel, the others to `re`
    and the pre-token table, and their ids are put back in order), special tokens between: tiktoken's ids, with and
    without the kernel."""
    if kernel == "none":
        monkeypatch.setattr(encode_kernel, "_BATCH", [None])
    elif encode_kernel.batch_kernel() is None:
        pytest.skip("no C compiler: the batch kernel cannot be built here")
    _, oracle = _cached_gpt2_pair()
    rng = random.Random(7)
    words = ["the", "naïve", "café", "1,234", "don't", "日本語", "x\ty", "'ll", "—", "  ", "\n\n", "z" * 300, EOT]
    text = "".join(rng.choice(words) + rng.choice([" ", "  ", "\n", ", "]) for _ in range(3000))
    gpt2, _ = _cached_gpt2_pair()
    for _ in range(2):  # (a fresh tokenizer each time: every piece is new)
        tok = Tokenizer(gpt2.vocab, gpt2.merges, [EOT])
        assert tok.encode(text) == oracle.encode(text, allowed_special="all")
