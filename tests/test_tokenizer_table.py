"""The tokenizer's numpy path for long texts (pieces looked up a block at a time in `chunk_table.PieceTable`):
exact against tiktoken and against the per-piece dict path, with forced hash collisions, tiny tables, pieces of
every length around the 8-byte word size, and multi-byte whitespace."""

import random

import numpy as np
import pytest
import regex
from hypothesis import example, given
from hypothesis import strategies as st

import cs336_basics._tokenization.chunk_table as piece_table
import cs336_basics._tokenization.encoder as encoder_module
from cs336_basics.tokenizer import WHITESPACE_CHARS, Tokenizer

from .test_tokenizer import EOT, PARITY_CASES, SPECIAL_CASES, STREAM_TEXT, _cached_gpt2_pair, _gpt2_vocab_merges

tiktoken = pytest.importorskip("tiktoken")


def _oracle_with_eot():
    """tiktoken's GPT-2 with <|endoftext|> special, like the shared pair's tokenizer."""
    return _cached_gpt2_pair()[1]


# Texts whose pieces straddle the 8-byte head/tail split, differ only after byte 8, repeat (so the second
# occurrence is a verified hit), and mix ASCII, multi-byte letters and multi-byte whitespace.
WORDS = ["a" * k for k in range(1, 26)] + ["é" * k for k in range(1, 13)] + ["abcdefghX", "abcdefghY", "abcdefgh"]
LONG_MIX = " ".join(WORDS * 2) + "\u3000x\u00a0y\u2028z\x85w \u2003 " + " ".join(reversed(WORDS))
TEXTS = [*PARITY_CASES, *SPECIAL_CASES, STREAM_TEXT, LONG_MIX, EOT.join(PARITY_CASES), (LONG_MIX + EOT) * 3]


@pytest.fixture
def oracle():
    return _oracle_with_eot()


def _expected(oracle, text):
    return oracle.encode(text, allowed_special="all")


def _fresh(**kwargs):
    vocab, merges = _gpt2_vocab_merges()
    return Tokenizer(vocab, merges, [EOT], **kwargs)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_table_path_parity(oracle, text):
    """The numpy path on every hand-picked case (each text cold, then warm) equals tiktoken and the dict path."""
    tok = _fresh()
    expected = _expected(oracle, text)
    assert tok._engine.encode_long(text).tolist() == expected  # cold: every piece misses
    assert tok._engine.encode_long(text).tolist() == expected  # warm: every piece hits
    assert tok._engine.encode_short(text) == expected


@given(st.text(max_size=300))
@example(EOT)  # the tokenizer has this special token: the oracle must have it too (it once did not)
@example("x" + EOT * 2 + "<|end")
def test_table_path_random_text(text):
    tok, oracle = _cached_gpt2_pair()
    assert tok._engine.encode_long(text).tolist() == oracle.encode(text, allowed_special="all")


_PARTS = ["a", "ab", " ", "  ", "\n", "\u3000", "\xa0", "'s", "1", "!", "é", "🙂", EOT, "<|end"]


@given(st.lists(st.sampled_from(_PARTS)))
def test_table_path_random_pieces_with_specials(parts):
    tok = _cached_gpt2_pair()[0]
    text = "".join(parts)
    assert tok._engine.encode_long(text).tolist() == _oracle_with_eot().encode(text, allowed_special="all")


@pytest.mark.parametrize("weaken", ["four_values", "head_and_length_only"])
def test_forced_hash_collisions_stay_exact(oracle, monkeypatch, weaken):
    """Weakened hashes: only 4 distinct values (nearly every piece collides in the table and among the misses),
    or a hash of the first 8 bytes and the length only (" abcdefghX" and " abcdefghY" collide, so only the tail
    words tell them apart). The checks must turn each collision into a miss or a representative of its own."""
    init = piece_table.PieceWords.__init__

    def weakened(self, *args):
        init(self, *args)
        if weaken == "four_values":
            self.hashes = self.hashes & np.uint64(3)
        else:
            self.hashes = self.head * np.uint64(0x9E3779B97F4A7C15) + self.lengths.astype(np.uint64)

    monkeypatch.setattr(piece_table.PieceWords, "__init__", weakened)
    tok = _fresh()
    for text in (LONG_MIX, EOT.join(PARITY_CASES), LONG_MIX):
        assert tok._engine.encode_long(text).tolist() == _expected(oracle, text)


def test_tiny_tables_clear_and_stay_exact(oracle):
    """Tables bounded to a few entries are cleared again and again (also mid-block): same ids, bounded size."""
    tok = _fresh(cache_size=3)
    text = EOT.join(TEXTS)
    assert tok._engine.encode_long(text).tolist() == _expected(oracle, text)
    assert tok._engine.table.size <= tok._engine.table.max_entries and tok._engine.pretoken_table.size <= 3


def test_blocks_are_cut_exactly(oracle, monkeypatch):
    """Long texts are encoded in blocks cut at safe places, also when a run without spaces outgrows the window."""
    monkeypatch.setattr(encoder_module, "_BLOCK_CHARS", 64)
    rng = random.Random(0)
    text = "".join(rng.choice([*WORDS, " ", "\n", EOT, "x" * 200, "🙂" * 30]) for _ in range(400))
    assert _fresh()._engine.encode_long(text).tolist() == _expected(oracle, text)


def test_encode_dispatch_and_encode_to_array(oracle):
    """encode takes the numpy path from _TABLE_MIN_CHARS on; encode_to_array gives the same ids as int64."""
    tok = _fresh()
    text = (LONG_MIX + EOT) * 200
    assert len(text) >= encoder_module._TABLE_MIN_CHARS
    expected = _expected(oracle, text)
    assert tok.encode(text) == expected
    assert tok._engine.table.size > 1  # the table was used (it holds more than the special token)
    array = tok.encode_to_array(text)
    assert array.dtype == np.int64 and array.tolist() == expected
    assert tok.encode_to_array("hi").tolist() == [5303]
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode_to_array(b"hi")


@given(st.text(alphabet=st.sampled_from(list(WHITESPACE_CHARS + "a\x1c\x1fé日🙂\u2000\u200b")), max_size=50))
def test_whitespace_mask_matches_regex(text):
    """Per byte: inside a character that `regex` matches with \\s (the GPT-2 pattern's whitespace)."""
    expected = [bool(regex.fullmatch(r"\s", ch)) for ch in text for _ in ch.encode("utf-8")]
    mask = encoder_module._WHITESPACE_MASK(np.frombuffer(text.encode("utf-8"), dtype=np.uint8))
    assert mask.tolist() == expected


@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=30))
def test_piece_words_equal_iff_bytes_equal(pieces):
    """PieceWords.equal and distinct agree with bytes equality, heads and tails included."""
    raw = b"".join(pieces)
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    words = piece_table.PieceWords(raw, np.cumsum(lengths) - lengths, lengths)
    a, b = np.meshgrid(np.arange(len(pieces)), np.arange(len(pieces)))
    got = words.equal(a.ravel(), b.ravel()).reshape(a.shape)
    assert got.tolist() == [[pieces[i] == pieces[j] for i in range(len(pieces))] for j in range(len(pieces))]
    reps, index, _ = words.distinct(np.arange(len(pieces)))
    assert [pieces[reps[i]] for i in index] == pieces
    assert len({pieces[r] for r in reps}) == len(reps)


@given(
    st.dictionaries(st.integers(0, 2**40), st.integers(-(2**62), 2**62), max_size=300), st.lists(st.integers(0, 2**40))
)
def test_int_map_equals_dict(mapping, extra):
    """IntMap.get equals dict.get for stored keys and for others (including keys that share home slots)."""
    keys = np.array(list(mapping), dtype=np.int64)
    table = piece_table.IntMap(keys, np.array(list(mapping.values()), dtype=np.int64))
    queries = [*mapping, *extra, *(k + 1 for k in mapping)]
    got = table.get(np.array(queries, dtype=np.int64), -7).tolist() if queries else []
    assert got == [mapping.get(q, -7) for q in queries]


def test_table_path_names_a_byte_missing_from_the_vocabulary():
    """A vocabulary without every byte: the numpy path raises the same clear error as the dict path."""
    tok = Tokenizer({i: bytes([i]) for i in range(128)}, [])  # ASCII bytes only
    text = "plain ascii words " * 300 + " café"
    assert tok._engine.encode_long(text[:-5]).tolist() == list(text[:-5].encode())
    with pytest.raises(ValueError, match=r"cannot encode ' café': byte b'\\xc3' is not in the vocabulary"):
        tok._engine.encode_long(text)


def test_caches_cleared_with_special_tokens_over_several_calls():
    """Tiny caches (cleared again and again, the special tokens' entries put back each time) over several calls of
    every path, with special tokens where the longer is not two copies of the shorter: the plain reference's ids."""
    from cs336_basics._tokenization import tokenizer_reference

    vocab, merges = _gpt2_vocab_merges()
    specials = [EOT, "<|a|>", "<|a|>x"]
    rng = random.Random(5)
    parts = [*WORDS[:12], " ", "\n", "é", *specials, "<|a|", "x<|a|>x", "<|a|><|a|>x"]
    texts = ["".join(rng.choice(parts) for _ in range(rng.choice([5, 40, 900]))) for _ in range(8)]
    for cache_size in (1, 4, 64):
        tok = Tokenizer(vocab, merges, specials, cache_size=cache_size)
        reference = tokenizer_reference.encode
        for text in texts + texts:  # a second round: entries cached, evicted, or put back after a clear
            expected = reference(text, tok.vocab, tok.merges, specials)
            assert tok.encode(text) == expected
            assert tok.encode_to_array(text).tolist() == expected
            assert list(tok.encode_iterable([text[i : i + 50] for i in range(0, len(text), 50)], 100)) == expected
