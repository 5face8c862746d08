"""BPE of one pre-token (cs336_basics._bpe_encode and its numba kernel) against the plain reference
(tokenizer_reference.bpe_merge), and long hostile runs through every encoding path against tiktoken."""

import random
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cs336_basics import _bpe_encode, tokenizer_reference
from cs336_basics.tokenizer import Tokenizer

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


def _all_merges(tok: Tokenizer, word: bytes) -> list[tuple[int, ...]]:
    """The word's ids by each implementation: list, heap, numba kernel (called directly, at any length)."""
    tables = tok._engine.merges
    ids = [tables.byte_ids[b] for b in word]
    kernel = _bpe_encode._numba_kernel()
    out = [
        _bpe_encode.merge_list(list(ids), tables.pair_table, tables.shift),
        _bpe_encode.merge_heap(list(ids), tables.pair_table, tables.shift),
    ]
    if kernel is not None and ids:
        slots, bits = tables.pair_map.slots, tables.pair_map.bits
        lengths = tables.token_lengths
        out.append(tuple(kernel(np.array(ids, dtype=np.int32), slots, bits, tables.shift, lengths).tolist()))
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


@pytest.fixture(params=["heap", "numba"])
def engine(request, monkeypatch):
    """Run the long-word path with the Python heap (numba off) or with the numba kernel from 1000 bytes on."""
    if request.param == "heap":
        monkeypatch.setattr(_bpe_encode, "NUMBA_MIN", 1 << 62)
        monkeypatch.setattr(_bpe_encode, "NUMBA_LOADED_MIN", 1 << 62)
    else:
        monkeypatch.setattr(_bpe_encode, "NUMBA_MIN", 1000)
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


def test_kernel_refills_a_full_heap_exactly(small, monkeypatch):
    """The kernel's heap rarely fills (it holds local minima only, and stale entries pop early; no input of the suite
    or of the benchmarks fills it), so the refill path is forced here: the kernel runs as plain Python (`py_func`)
    with a heap left only 2 entries of room after each fill, so that every merge refills it (and must find the next
    merge among the local minima the refill lists)."""
    numba_kernel = pytest.importorskip("cs336_basics._bpe_encode_numba")
    fill = numba_kernel._fill_heap.py_func
    refills = []

    def tight_fill(ids, lengths, heap, slots, bits, shift):
        heap, size = fill(ids, lengths, heap, slots, bits, shift)
        refills.append(size)
        return heap[: size + 2].copy(), size

    monkeypatch.setattr(numba_kernel, "_fill_heap", tight_fill)
    tok, vocab, merges = small
    tables = tok._engine.merges
    lengths = tables.token_lengths.astype(np.int64)  # (in Python, int32 positions would overflow the heap keys)
    rng = random.Random(4)
    words = [bytes(rng.choice(b"abc ") for _ in range(400)), b"a" * 300, b"ab" * 150 + b"c", b"cab " * 80]
    for word in words:
        ids = [tables.byte_ids[b] for b in word]
        expected = _bpe_encode.merge_heap(list(ids), tables.pair_table, tables.shift)
        kernel = numba_kernel.merge_heap_kernel.py_func
        got = kernel(np.array(ids, dtype=np.int32), tables.pair_map.slots, tables.pair_map.bits, tables.shift, lengths)
        assert tuple(got.tolist()) == expected
    assert len(refills) > 400  # (one fill per word, then a refill after each merge)


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


def test_kernel_takes_mid_length_pieces_only_once_loaded(monkeypatch):
    """The compiled kernel merges pre-tokens of NUMBA_LOADED_MIN+ bytes once loaded, and is loaded only for one of
    NUMBA_MIN+ bytes (a mid-length piece in a fresh process must not pay numba's import)."""
    kernel = _bpe_encode._numba_kernel()
    if kernel is None:
        pytest.skip("numba is not installed")
    assert _bpe_encode._kernel_for(5_000) is kernel
    assert _bpe_encode._kernel_for(_bpe_encode.NUMBA_LOADED_MIN - 1) is None
    monkeypatch.setattr(_bpe_encode, "_KERNEL", [])  # a fresh process: not loaded yet
    assert _bpe_encode._kernel_for(5_000) is None
    assert not _bpe_encode._KERNEL
    assert _bpe_encode._kernel_for(_bpe_encode.NUMBA_MIN) is kernel


def test_huge_pieces_take_their_own_path_exactly(engine, monkeypatch):
    """Pieces and pre-tokens of _encoder._HUGE_BYTES+ bytes skip the caches (the longest pre-tokens go to the
    kernel as int32 ids, with no other copy held), between ordinary pieces; made 300 bytes here so that short texts
    take that path, with runs of many pre-tokens, of one, and several per block: ids equal tiktoken's."""
    from cs336_basics import _encoder

    monkeypatch.setattr(_encoder, "_HUGE_BYTES", 300)
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
    huge_piece = _encoder.Encoder._encode_huge_piece
    monkeypatch.setattr(_encoder.Encoder, "_encode_huge_piece", lambda *a: calls.append(a[3]) or huge_piece(*a))
    for text in texts:
        assert len(text) >= _encoder._TABLE_MIN_CHARS  # (the block path)
        expected = oracle.encode(text, allowed_special="all")
        assert tok.encode(text) == expected
        assert tok.encode_to_array(text).tolist() == expected
    assert len(calls) >= 2 * 8 and max(calls) >= 5000  # (each text has huge pieces, of all kinds)
