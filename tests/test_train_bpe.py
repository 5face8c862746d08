"""BPE training: exact equality with the textbook trainer (`cs336_basics._tokenization.bpe_reference`), the project's
own
fixture corpus (tests/fixtures/bpe/), the CS336 fixture, the parallel path, pathological corpora, errors, the CLI.

`train_bpe` must give the reference's merges, in order, and the same vocabulary (special tokens, then the 256 bytes,
then one token per merge), with either merge engine.
"""

import inspect
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from cs336_basics import bpe
from cs336_basics._tokenization import clib, merge_kernel
from cs336_basics._tokenization import merge_python as bpe_py
from cs336_basics._tokenization.bpe_reference import count_pretokens_reference as naive_pretokens
from cs336_basics._tokenization.bpe_reference import merge_reference as naive_merges
from cs336_basics._tokenization.bpe_reference import train_bpe_reference as naive_train
from cs336_basics.bpe import PYTHON_MERGE_MAX_WORK, TrainStats, find_chunk_boundaries, merge_pretokens, train_bpe
from cs336_basics.pretokenize import GPT2_PATTERN as GPT2_PAT
from cs336_basics.tokenizer_files import decode_token, load_tokenizer_dir, save_tokenizer

from .adapters import run_train_bpe
from .conftest import NEEDS_CC, shared_fixture

BACKENDS = ["python", pytest.param("c", marks=NEEDS_CC)]  # every exactness test runs on both merge engines
FIXTURES = Path(__file__).parent / "fixtures" / "bpe"


def write(tmp_path, text: str, name: str = "hello.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


# --------------------------------------------------------------------------------------------------------------------
# Hand-written corpora

HANDWRITTEN = {
    "handout": "low low low low low lower lower widest widest widest newest newest newest newest newest newest",
    "scripts": "Привет мир! Γειά σου κόσμε. שלום עולם. مرحبا بالعالم. こんにちは世界。你好，世界。 नमस्ते दुनिया " * 3,
    "emoji": "🙂🙂 hi 🚀🚀🚀 rocket 👩‍👩‍👧 family 🙂 ok 🏳️‍🌈 " * 4,
    "digits": "In 1999 there were 12345 items, 3.14159 pi, 2024-11-26, ٣٤٥ and ½ ⅓; 1000000 1000000 99 9 0.",
    "whitespace": "a  b   c    d\t\te\n\n\nf     \n   g \t \n" * 5 + "        end   ",
    "crlf": "line one\r\nline two\r\n\r\nlast line\r\n" * 6,
    "contractions": "I'm you're he's we'll they've she'd don't CAN'T it's 's 'll" * 3,
    "runs_out": "ab ab",  # only a handful of merges are possible; vocab_size asks for more
    "punctuation": "Hello, world!!! (yes) [no] {maybe}... ---- ==== ?!?! @@@ ### $$$ %%% ^^^ &&& ***",
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(HANDWRITTEN))
@pytest.mark.parametrize("vocab_size", [260, 300, 400])
def test_matches_naive_on_handwritten_corpora(tmp_path, name, vocab_size, backend):
    """Merges (in order) and vocab equal the naive trainer's, for each hand-written corpus, with either backend."""
    text = HANDWRITTEN[name]
    path = write(tmp_path, text)
    vocab, merges = run_train_bpe(input_path=path, vocab_size=vocab_size, special_tokens=[], merge_backend=backend)
    expected_vocab, expected_merges = naive_train(text, vocab_size, [])
    assert merges == expected_merges
    assert vocab == expected_vocab


@pytest.mark.parametrize("backend", BACKENDS)
def test_handout_example(backend):
    """The handout's worked example: low 5, lower 2, widest 3, newest 6 -> these six merges, in this order."""
    counts = {b"low": 5, b"lower": 2, b"widest": 3, b"newest": 6}
    expected = [(b"s", b"t"), (b"e", b"st"), (b"o", b"w"), (b"l", b"ow"), (b"w", b"est"), (b"n", b"e")]
    assert merge_pretokens(counts, 6, backend=backend) == expected
    assert naive_merges(counts, 6) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_docstring_example(tmp_path, backend):
    """The example in train_bpe's docstring: a tie at 3 goes to (o, w), the greater pair."""
    vocab, merges = train_bpe(write(tmp_path, "low low lower"), 258, [], merge_backend=backend)
    assert merges == [(b"o", b"w"), (b"l", b"ow")]
    assert vocab[256] == b"ow"


@pytest.mark.parametrize("backend", BACKENDS)
def test_merges_run_out_before_vocab_size(tmp_path, backend):
    """When no pair is left, training stops early: fewer merges, and the vocab has exactly those."""
    vocab, merges = train_bpe(write(tmp_path, "ab ab ab"), 1000, ["<|endoftext|>"], merge_backend=backend)
    assert merges == naive_merges(naive_pretokens("ab ab ab", []), 1000)
    assert len(merges) == 2  # (a, b), then (" ", ab)
    assert len(vocab) == 1 + 256 + 2


SPECIAL_TEXT = (
    "xa<|a|>xa<|a|>x<|a|><|a|>xx x<|a|> x<|a|>x<|a|>xyz "
    "the cat<|endoftext|>the dog<|endoftext|><|endoftext|>the bird<|sep|>a b<|sep|x<|endoftext|>|>"
    "hello<|endoftext|>world <|sep|><|sep|> tail<|endoftext|><|endoftext|>"
)


@pytest.mark.parametrize(
    "special_tokens",
    [
        ["<|endoftext|>"],
        ["<|endoftext|>", "<|endoftext|><|endoftext|>"],  # one is a prefix of the other
        ["<|sep|>", "<|endoftext|>", "<|sep|><|sep|>", "<|"],
        ["t"],  # a special token that is also a byte: every "t" is a boundary and removed
        ["<|a|>", "<|a|>x"],  # the longer is not two copies of the shorter: "<|a|>x" must win over "<|a|>"
        ["<|a|>x", "<|a|>", "<|"],
    ],
)
def test_special_tokens_are_boundaries(tmp_path, special_tokens):
    """Special tokens split the text (longest first), are removed, and are never merged into anything."""
    vocab_size = 256 + len(special_tokens) + 40
    vocab, merges = run_train_bpe(
        input_path=write(tmp_path, SPECIAL_TEXT), vocab_size=vocab_size, special_tokens=special_tokens
    )
    expected_vocab, expected_merges = naive_train(SPECIAL_TEXT, vocab_size, special_tokens)
    assert merges == expected_merges
    assert vocab == expected_vocab
    for token in special_tokens:
        assert vocab[special_tokens.index(token)] == token.encode("utf-8")
    assert not any(b"<|endoftext|>" in a + b for a, b in merges)


def test_longest_special_token_wins(tmp_path):
    """With both `<|e|>` and `<|e|><|e|>` special, the double is one boundary; the text between is unaffected."""
    text = "x<|e|><|e|>y<|e|>z"
    assert naive_pretokens(text, ["<|e|>", "<|e|><|e|>"]) == Counter({b"x": 1, b"y": 1, b"z": 1})
    vocab, merges = train_bpe(write(tmp_path, text), 300, ["<|e|>", "<|e|><|e|>"])
    assert merges == []


def test_empty_corpus(tmp_path):
    """An empty file gives the special tokens and the 256 bytes, no merges."""
    vocab, merges = train_bpe(write(tmp_path, ""), 1000, ["<|endoftext|>", "<pad>"])
    assert merges == []
    assert vocab == {0: b"<|endoftext|>", 1: b"<pad>", **{2 + b: bytes([b]) for b in range(256)}}


# --------------------------------------------------------------------------------------------------------------------
# Property tests

PIECES = ["a", "b", "ab", "ba", " ", "  ", "\n", "\r\n", "\t", "é", "ü", "中", "🙂", "1", "23", "!", "'s", "'ll", "x"]


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    pieces=st.lists(st.sampled_from(PIECES + ["<|s|>", "<|s|><|s|>"]), max_size=60),
    extra=st.integers(0, 40),
)
def test_matches_naive_on_generated_corpora(tmp_path_factory, pieces, extra, backend):
    """Any small corpus built from letters, spaces, newlines, multi-byte chars and special tokens: equal to naive."""
    text = "".join(pieces)
    specials = ["<|s|>", "<|s|><|s|>"]
    path = write(tmp_path_factory.mktemp("gen"), text)
    vocab, merges = train_bpe(path, 256 + len(specials) + extra, specials, num_workers=1, merge_backend=backend)
    assert (vocab, merges) == naive_train(text, 256 + len(specials) + extra, specials)


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    words=st.dictionaries(st.text("abc", min_size=1, max_size=8).map(str.encode), st.integers(1, 5), max_size=12),
    num_merges=st.integers(0, 30),
)
def test_merge_pretokens_matches_naive(words, num_merges, backend):
    """merge_pretokens on random words over a 3-letter alphabet (many ties, long merge chains) equals naive."""
    assert merge_pretokens(words, num_merges, backend=backend) == naive_merges(words, num_merges)


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    words=st.dictionaries(st.text("ab", min_size=2, max_size=80).map(str.encode), st.integers(1, 4), max_size=4),
    num_merges=st.integers(1, 40),
)
def test_long_words_over_two_letters_match_naive(words, num_merges, backend):
    """Few long words over two letters: many occurrences of a pair in one word, adjacent (a b a b) and overlapping
    (a a a) ones, and a merge's neighbour merged in the same step."""
    assert merge_pretokens(words, num_merges, backend=backend) == naive_merges(words, num_merges)


@given(
    pair1=st.tuples(st.binary(max_size=4), st.binary(max_size=4)),
    pair2=st.tuples(st.binary(max_size=4), st.binary(max_size=4)),
)
def test_python_merger_tie_break_key_is_descending(pair1, pair2):
    """The pure-Python merger's heap key (key(a) + key(b)) orders (bytes, bytes) pairs exactly opposite to Python,
    prefixes and the bytes 0x00 / 0xff included, so equal counts pop the lexicographically greatest pair first."""
    k1 = bpe_py._desc_key(pair1[0]) + bpe_py._desc_key(pair1[1])
    k2 = bpe_py._desc_key(pair2[0]) + bpe_py._desc_key(pair2[1])
    assert (k1 < k2) == (pair1 > pair2)
    assert (k1 == k2) == (pair1 == pair2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("words", [{b"abab": 3, b"ab": 1}, {b"aaaa": 2, b"aaa": 5, b"aaaaa": 1}, {b"abcabab": 2}])
def test_overlapping_occurrences(words, backend):
    """Adjacent and overlapping occurrences (a b a b -> new new, runs of a) update the neighbouring pair counts
    exactly: every merge, down to the last pair, equals the naive trainer's."""
    assert merge_pretokens(words, 20, backend=backend) == naive_merges(words, 20)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_merging_equals_one_call(backend):
    """With progress on (a thread merges while this one updates the bar), the same merges."""
    counts = naive_pretokens(HANDWRITTEN["scripts"] + HANDWRITTEN["punctuation"] + HANDWRITTEN["handout"], [])
    expected = naive_merges(counts, 250)
    assert merge_pretokens(counts, 250, progress=True, backend=backend) == expected
    assert merge_pretokens(counts, 250, backend=backend) == expected


# --------------------------------------------------------------------------------------------------------------------
# The parallel and streaming path


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Force worker processes on small files and sub-chunks of a few bytes, so every cut path runs."""
    monkeypatch.setattr(bpe, "SMALL_FILE_BYTES", 0)
    monkeypatch.setattr(bpe, "SUBCHUNK_BYTES", 48)


MIXED = (
    "Once upon a time, there was a cat.\nThe cat sat.<|endoftext|>\n"
    "Über café — naïve 🙂 text here.\n\nAnother line\r\nwith CRLF.<|endoftext|><|endoftext|>"
    "    indented\n  code = 1 + 2\n<|endoftext|>Short.<|endoftext|>"
)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("special_tokens", [["<|endoftext|>"], [], ["<|endoftext|>", "<|endoftext|><|endoftext|>"]])
def test_parallel_equals_one_worker(tmp_path, tiny_chunks, special_tokens, backend):
    """2 and 3 worker processes over safe-cut ranges, read in tiny sub-chunks, give what 1 process and naive give."""
    text = MIXED * 20
    path = write(tmp_path, text)
    vocab_size = 256 + len(special_tokens) + 60
    stats = TrainStats()
    parallel = train_bpe(path, vocab_size, special_tokens, num_workers=2, stats=stats, merge_backend=backend)
    assert stats.num_workers == 2
    assert train_bpe(path, vocab_size, special_tokens, num_workers=3, merge_backend=backend) == parallel
    assert train_bpe(path, vocab_size, special_tokens, num_workers=1, merge_backend=backend) == parallel
    assert parallel == naive_train(text, vocab_size, special_tokens)


@given(pieces=st.lists(st.sampled_from(PIECES + ["<|s|>", "\nThe", ".\nA"]), max_size=80))
def test_chunked_pretokens_equal_whole(pieces):
    """Cutting a file into ranges and sub-chunks never changes its pre-token counts."""
    import tempfile

    text = "".join(pieces)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.txt")
        with open(path, "wb") as f:
            f.write(text.encode())
        bounds = find_chunk_boundaries(path, 4, ["<|s|>"])
        assert bounds[0] == 0 and bounds[-1] == len(text.encode()) and bounds == sorted(bounds)
        old = bpe.SUBCHUNK_BYTES
        bpe.SUBCHUNK_BYTES = 8
        try:
            total = Counter()
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                total += bpe.pretokenize_range(path, lo, hi, ["<|s|>"])
        finally:
            bpe.SUBCHUNK_BYTES = old
        assert total == naive_pretokens(text, ["<|s|>"])


def test_long_non_ascii_document_is_cut_exactly(tmp_path):
    """A long document with some non-ASCII lines is counted in pieces cut at newlines: same counts as naive."""
    text = ("Ünïcode line one.\nASCII line two.\n  indented\nThe end 🙂.\n\n\nNext:\tx\n" * 60) + "<|s|>tail é"
    path = write(tmp_path, text)
    assert bpe.pretokenize_range(path, 0, len(text.encode()), ["<|s|>"]) == naive_pretokens(text, ["<|s|>"])
    bad = text.encode() + b"\nmore \xe9 latin-1"
    path.write_bytes(bad)
    offset = bad.index(b"\xe9")
    with pytest.raises(ValueError, match=f"byte 0xe9 at offset {offset}"):
        bpe.pretokenize_range(path, 0, len(bad), [])


def test_no_special_tokens_still_cuts(tmp_path):
    """Without special tokens a file is still cut (between a non-space and a space or newline), exactly."""
    text = "first line.\nSecond line\n  third\nFourth.\n" * 50
    path = write(tmp_path, text)
    bounds = find_chunk_boundaries(path, 4, [])
    assert len(bounds) == 5
    raw = text.encode()
    for b in bounds[1:-1]:
        assert not raw[b - 1 : b].isspace() and raw[b : b + 1] in (b" ", b"\n")
    total = Counter()
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        total += bpe.pretokenize_range(path, lo, hi, [])
    assert total == naive_pretokens(text, [])


# --------------------------------------------------------------------------------------------------------------------
# The CS336 reference fixture and the time guard


def _reference():
    vocab_path = shared_fixture("train-bpe-reference-vocab.json")
    merges_path = shared_fixture("train-bpe-reference-merges.txt")
    with open(vocab_path, encoding="utf-8") as f:
        ref_vocab = {int(i): decode_token(tok) for tok, i in json.load(f).items()}
    with open(merges_path, encoding="utf-8") as f:
        ref_merges = [tuple(decode_token(t) for t in line.rstrip("\n").split(" ")) for line in f if line.strip()]
    return ref_vocab, ref_merges


@pytest.mark.parametrize("backend", ["auto"])
def test_matches_cs336_reference(backend):
    """corpus.en, vocab 500: merges in order and the vocab (same ids, same byte strings) equal the reference."""
    corpus = shared_fixture("corpus.en")
    ref_vocab, ref_merges = _reference()
    kw = {"merge_backend": backend}
    vocab, merges = run_train_bpe(input_path=corpus, vocab_size=500, special_tokens=["<|endoftext|>"], **kw)
    assert merges == ref_merges
    assert set(vocab) == set(ref_vocab)
    assert set(vocab.values()) == set(ref_vocab.values())


def test_corpus_en_is_fast():
    """Generous guard: a second call on corpus.en at vocab 500 in under 1.5 s (we measure ~0.1 s, Python merging)."""
    corpus = shared_fixture("corpus.en")
    train_bpe(corpus, 300, ["<|endoftext|>"])  # imports (and the C engine's load, if chosen) are paid once, not here
    start = time.perf_counter()
    train_bpe(corpus, 500, ["<|endoftext|>"])
    assert time.perf_counter() - start < 1.5


FRESH_PROCESS_SCRIPT = """
import sys, time
from cs336_basics.bpe import TrainStats, train_bpe
stats = TrainStats()
start = time.perf_counter()
vocab, merges = train_bpe(sys.argv[1], vocab_size=500, special_tokens=["<|endoftext|>"], stats=stats)
print(time.perf_counter() - start, len(vocab), stats.merge_backend, "tqdm" in sys.modules)
"""


def _fresh_process_train(corpus: Path, cache: Path) -> tuple[float, int, str, str]:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "CS336_CACHE_DIR": str(cache)}
    script = [sys.executable, "-c", FRESH_PROCESS_SCRIPT, str(corpus)]
    out = subprocess.run(script, cwd=root, capture_output=True, text=True, check=True, env=env)
    seconds, vocab_len, engine, tqdm_imported = out.stdout.split()
    return float(seconds), int(vocab_len), engine, tqdm_imported


def test_corpus_en_is_fast_in_a_fresh_process(tmp_path):
    """The CS336 speed test times the FIRST call in a fresh process: corpus.en, vocab 500, under 1.5 s. With no
    cached build of the C engine it merges in Python and builds nothing (a build would cost ~0.3 s); tqdm is not
    imported when no bar is shown."""
    corpus = shared_fixture("corpus.en")
    seconds, vocab_len, engine, tqdm_imported = _fresh_process_train(corpus, tmp_path / "cache")
    assert (vocab_len, engine, tqdm_imported) == (500, "python", "False")
    assert seconds < 1.5
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.so"))


@NEEDS_CC
def test_corpus_en_merges_in_c_once_the_engine_is_built(tmp_path):
    """A fresh process with the C engine's build in its cache merges corpus.en in C (loading takes ~1 ms)."""
    corpus = shared_fixture("corpus.en")
    env = {**os.environ, "CS336_CACHE_DIR": str(tmp_path / "cache")}
    build = "from cs336_basics._tokenization import merge_kernel; merge_kernel.load()"
    subprocess.run([sys.executable, "-c", build], capture_output=True, text=True, check=True, env=env)
    seconds, vocab_len, engine, _ = _fresh_process_train(corpus, tmp_path / "cache")
    assert (vocab_len, engine) == (500, "c")
    assert seconds < 1.5


@NEEDS_CC
def test_auto_backend_choice(monkeypatch, tmp_path):
    """ "auto" merges small problems in Python while the C engine is not built (and does not build it), in C once its
    build is cached or loaded, and large problems in C, building it if need be."""
    calls = []
    real = bpe_py.merge_python
    monkeypatch.setattr(bpe_py, "merge_python", lambda *a: calls.append("python") or real(*a))
    monkeypatch.setattr(clib, "_loaded", {})
    monkeypatch.setenv("CS336_CACHE_DIR", str(tmp_path / "cache"))
    counts = {b"low": 5, b"lower": 2, b"widest": 3, b"newest": 6}
    expected = naive_merges(counts, 6)
    assert not merge_kernel.built()
    assert bpe._merge(counts, 6, False, "auto") == (expected, "python")
    assert calls == ["python"] and not merge_kernel.built()  # (nothing was built)
    monkeypatch.setattr(bpe, "PYTHON_MERGE_MAX_WORK", 10)  # 21 bytes x (1 + 6 / 3000) > 10: C, built now
    assert bpe._merge(counts, 6, False, "auto") == (expected, "c")
    assert calls == ["python"] and merge_kernel.built()
    monkeypatch.setattr(bpe, "PYTHON_MERGE_MAX_WORK", PYTHON_MERGE_MAX_WORK)
    assert bpe._merge(counts, 6, False, "auto") == (expected, "c")  # small, but the engine is there: C
    assert calls == ["python"]


# --------------------------------------------------------------------------------------------------------------------
# Bad input


def test_vocab_size_too_small(tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size=257 must be at least 256 \+ len\(special_tokens\) = 258"):
        train_bpe(write(tmp_path, "hello"), 257, ["<a>", "<b>"])


def test_vocab_size_not_int(tmp_path):
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        train_bpe(write(tmp_path, "hello"), 300.0, [])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="input_path=.*nope.txt.* does not exist"):
        train_bpe(tmp_path / "nope.txt", 300, [])


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(ValueError, match="is not a regular file"):
        train_bpe(tmp_path, 300, [])


def test_unreadable_file(tmp_path, monkeypatch):
    path = write(tmp_path, "hello")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the read fail the way it fails for other users

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(bpe, "open", denied, raising=False)
    with pytest.raises(PermissionError, match="input_path=.*hello.*cannot be read: Permission denied"):
        train_bpe(path, 300, [])


def test_empty_special_token(tmp_path):
    with pytest.raises(ValueError, match="holds an empty string"):
        train_bpe(write(tmp_path, "hello"), 300, ["<|endoftext|>", ""])


def test_duplicate_special_tokens(tmp_path):
    with pytest.raises(ValueError, match="lists '<a>' twice"):
        train_bpe(write(tmp_path, "hello"), 300, ["<a>", "<b>", "<a>"])


def test_special_tokens_must_be_a_list(tmp_path):
    with pytest.raises(TypeError, match="must be a list of str"):
        train_bpe(write(tmp_path, "hello"), 300, "<|endoftext|>")


@pytest.mark.parametrize("num_workers", [1, 2])
def test_invalid_utf8_says_where(tmp_path, tiny_chunks, num_workers):
    """A corpus that is not UTF-8 names the first bad byte's file offset, from one process or from a worker."""
    raw = ("good text here. " * 20).encode() + b"<|endoftext|>ok \xff bad" + b" more text" * 10
    path = tmp_path / "bad.txt"
    path.write_bytes(raw)
    offset = raw.index(b"\xff")
    with pytest.raises(ValueError, match=f"not valid UTF-8: byte 0xff at offset {offset}"):
        train_bpe(path, 300, ["<|endoftext|>"], num_workers=num_workers)


def test_bad_merge_backend(tmp_path):
    with pytest.raises(ValueError, match=r"merge_backend='fast' must be one of \('auto', 'python', 'c'\)"):
        train_bpe(write(tmp_path, "hello"), 300, [], merge_backend="fast")
    with pytest.raises(ValueError, match=r"merge_backend='C' must be one of"):
        merge_pretokens({b"ab": 1}, 1, backend="C")


def test_unknown_keyword(tmp_path):
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        train_bpe(write(tmp_path, "hi"), 300, [], vocab=3)


# --------------------------------------------------------------------------------------------------------------------
# Saving what we train: exact round trip, and readable by Hugging Face tokenizers and tiktoken

ODD_TEXT = "  spaces   and\n\n\nnewlines\t\ttabs 🙂🙂 é ü 中文 \r\n" * 30


def _trained(tmp_path):
    return train_bpe(write(tmp_path, ODD_TEXT), 256 + 1 + 80, ["<|endoftext|>"])


def test_save_load_round_trip(tmp_path):
    """Every token (spaces, newlines, bytes that are not UTF-8 alone) survives save -> load exactly."""
    vocab, merges = _trained(tmp_path)
    assert any(b"\n" in t for t in vocab.values()) and any(b"  " in t for t in vocab.values())
    assert any(_not_utf8(t) for t in vocab.values())
    save_tokenizer(vocab, merges, tmp_path / "tok", ["<|endoftext|>"])
    vocab2, merges2, special2 = load_tokenizer_dir(tmp_path / "tok")
    assert vocab2 == vocab and merges2 == merges and special2 == ["<|endoftext|>"]


def _not_utf8(token: bytes) -> bool:
    try:
        token.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def encode_kernel(text: str, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]]) -> list[int]:
    """Plain merge-list BPE over GPT-2 pre-tokens: the reference the foreign loaders must agree with."""
    ranks = {pair: i for i, pair in enumerate(merges)}
    ids = {tok: i for i, tok in vocab.items()}
    out = []
    for piece in regex.findall(GPT2_PAT, text):
        parts = [bytes([b]) for b in piece.encode()]
        while len(parts) > 1:
            pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(zip(parts, parts[1:], strict=False))]
            rank, i = min(pairs)
            if rank == len(ranks):
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        out.extend(ids[p] for p in parts)
    return out


SAMPLES = ["  spaces   and\n\n\nnewlines", "tabs 🙂🙂 é ü 中文 \r\n", "unseen words: zebra 42!", ODD_TEXT[:200]]


def test_hf_tokenizers_loads_saved_files(tmp_path):
    """Hugging Face `tokenizers` reads our vocab.json + merges.txt and encodes/decodes like merge-list BPE."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab, merges = _trained(tmp_path)
    save_tokenizer(vocab, merges, tmp_path / "tok", ["<|endoftext|>"])
    model = tokenizers.models.BPE.from_file(str(tmp_path / "tok/vocab.json"), str(tmp_path / "tok/merges.txt"))
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tokenizers.decoders.ByteLevel()
    for text in SAMPLES:
        ids = tok.encode(text).ids
        assert ids == encode_kernel(text, vocab, merges)
        assert tok.decode(ids) == text


def test_tiktoken_loads_saved_files(tmp_path):
    """tiktoken built from our saved vocab.json (ranks = ids) encodes/decodes like merge-list BPE."""
    tiktoken = pytest.importorskip("tiktoken")
    vocab, merges = _trained(tmp_path)
    save_tokenizer(vocab, merges, tmp_path / "tok", ["<|endoftext|>"])
    loaded, _, special = load_tokenizer_dir(tmp_path / "tok")
    specials = {t: i for i, t in loaded.items() if t.decode("utf-8", "replace") in special}
    enc = tiktoken.Encoding(
        "ours",
        pat_str=GPT2_PAT,
        mergeable_ranks={t: i for i, t in loaded.items() if i not in specials.values()},
        special_tokens={t.decode(): i for t, i in specials.items()},
    )
    for text in SAMPLES:
        ids = enc.encode(text)
        assert ids == encode_kernel(text, vocab, merges)
        assert enc.decode(ids) == text


# --------------------------------------------------------------------------------------------------------------------
# The command line


def test_cli_writes_tokenizer_dir(tmp_path, capsys):
    """`cs336-basics train-bpe` writes a loadable directory equal to train_bpe's result and reports its numbers."""
    from cs336_basics.cli import main

    corpus = write(tmp_path, MIXED * 5)
    out = tmp_path / "tok"
    argv = [str(corpus), "--vocab-size", "300", "--special-token", "<|endoftext|>", "--out", str(out)]
    assert main(["train-bpe", *argv, "--workers", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for needle in ("wall time", "peak memory", "distinct pre-tokens", "longest tokens"):
        assert needle in printed
    vocab, merges, special = load_tokenizer_dir(out)
    assert (vocab, merges) == train_bpe(corpus, 300, ["<|endoftext|>"])
    assert special == ["<|endoftext|>"]
    assert sorted(p.name for p in out.iterdir()) == ["merges.txt", "special_tokens.json", "vocab.json"]
    assert "merges.txt, special_tokens.json, vocab.json" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hello.txt", "tok"]  # no temp dir left beside it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vocab-size", "100"], "vocab_size=100 must be at least"),
        (["--vocab-size", "300", "--special-token", ""], "empty string"),
        (["--vocab-size", "300", "--special-token", "<a>", "--special-token", "<a>"], "twice"),
        (["--vocab-size", "300", "--workers", "0"], "num_workers=0 must be a positive int"),
    ],
)
def test_cli_bad_input_leaves_no_output(tmp_path, capsys, args, message):
    """Bad arguments: exit status 2, a one-line error naming the rule, and no output directory at all."""
    from cs336_basics.cli import main

    corpus = write(tmp_path, "some text")
    out = tmp_path / "tok"
    assert main(["train-bpe", str(corpus), "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hello.txt"]


def test_cli_bad_corpus_leaves_no_output(tmp_path, capsys):
    """A missing file and a file that is not UTF-8: exit status 2 and nothing written."""
    from cs336_basics.cli import main

    (tmp_path / "bad.txt").write_bytes(b"abc \xc3\x28 def")
    for name, message in [("missing.txt", "does not exist"), ("bad.txt", "not valid UTF-8: byte 0xc3 at offset 4")]:
        out = tmp_path / "tok"
        assert main(["train-bpe", str(tmp_path / name), "--vocab-size", "300", "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]


def test_cli_refuses_non_empty_out(tmp_path, capsys):
    """An existing non-empty --out is never overwritten."""
    from cs336_basics.cli import main

    corpus = write(tmp_path, "some text")
    out = tmp_path / "tok"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["train-bpe", str(corpus), "--vocab-size", "300", "--out", str(out)]) == 2
    assert "already exists and is not an empty directory" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_writes_each_file_once_atomically(tmp_path, monkeypatch):
    """special_tokens.json is written by save_tokenizer (atomically), not a second time by the command."""
    from cs336_basics.cli import main

    monkeypatch.setattr(Path, "write_text", lambda *a, **k: pytest.fail("a plain (non-atomic) write_text"))
    corpus = write(tmp_path, "some text <|endoftext|> more text")
    args = [str(corpus), "--vocab-size", "270", "--special-token", "<|endoftext|>", "--out", str(tmp_path / "tok")]
    assert main(["train-bpe", *args, "--workers", "1", "--no-progress"]) == 0
    assert load_tokenizer_dir(tmp_path / "tok")[2] == ["<|endoftext|>"]


def test_cli_cuts_long_tokens(tmp_path, capsys):
    """The summary shows a long token as its first bytes and its length, not 8 KB of "=" on the terminal."""
    from cs336_basics.cli import main
    from cs336_basics.commands.train_bpe import show_token

    assert show_token(b"=" * 8000, 4) == "b'====' ... (8000 bytes)"
    assert show_token(b"abc") == "b'abc' (3 bytes)"
    corpus = write(tmp_path, "=" * 8192 + " text")
    assert main(["train-bpe", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "tok"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "(8192 bytes)" in printed and "=" * 100 not in printed
    assert max(map(len, printed.splitlines())) < 400


# --------------------------------------------------------------------------------------------------------------------
# The project's own fixture (tests/fixtures/bpe/, made by make_reference.py with the textbook trainer)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_workers", [1, 2])
def test_matches_project_fixture(backend, num_workers, monkeypatch):
    """corpus.txt (several scripts, runs, `<|endoftext|>`, `<|a|>`, `<|a|>x`): the reference vocab and merges."""
    monkeypatch.setattr(bpe, "SMALL_FILE_BYTES", 0)  # the parallel path too, on a small file
    ref_vocab, ref_merges, specials = load_tokenizer_dir(FIXTURES / "reference")
    assert specials == ["<|endoftext|>", "<|a|>", "<|a|>x"]
    vocab, merges = train_bpe(
        FIXTURES / "corpus.txt", len(ref_vocab), specials, num_workers=num_workers, merge_backend=backend
    )
    assert merges == ref_merges
    assert vocab == ref_vocab


def test_project_fixture_is_the_reference_output():
    """The committed reference is what bpe_reference computes from the committed corpus (make_reference.py)."""
    sys.path.insert(0, str(FIXTURES))
    try:
        import make_reference
    finally:
        sys.path.remove(str(FIXTURES))
    text = (FIXTURES / "corpus.txt").read_bytes().decode("utf-8")  # keeps its \r\n
    assert text == make_reference.make_corpus()
    vocab, merges = naive_train(text, make_reference.VOCAB_SIZE, make_reference.SPECIAL_TOKENS)
    assert (vocab, merges, make_reference.SPECIAL_TOKENS) == load_tokenizer_dir(FIXTURES / "reference")


# --------------------------------------------------------------------------------------------------------------------
# Contracts found in review


def test_train_bpe_signature_is_explicit():
    """Every option of train_bpe is a named parameter (no **kwargs that hide `stats`), and stats is filled."""
    params = inspect.signature(train_bpe).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert "stats" in params and params["stats"].default is None


def test_stats_are_filled(tmp_path):
    stats = TrainStats()
    text = "low low lower " * 10
    train_bpe(write(tmp_path, text), 260, [], stats=stats, merge_backend="python")
    assert stats.num_pretokens == len(naive_pretokens(text, [])) == 4
    assert stats.merge_backend == "python" and stats.num_workers == 1


def test_cited_docs_exist():
    """Every docs/ or notes/ file that a BPE module cites exists in the repository."""
    root = Path(__file__).resolve().parent.parent
    modules = [
        "bpe.py",
        "_tokenization/merge_kernel.c",
        "_tokenization/merge_kernel.py",
        "_tokenization/merge_python.py",
    ]
    modules.append("_tokenization/bpe_reference.py")
    modules.append("commands/train_bpe.py")
    for name in modules:
        source = (root / "cs336_basics" / name).read_text("utf-8")
        for cited in re.findall(r"\b(?:docs|notes)/[\w./-]+\.md", source):
            assert (root / cited).is_file(), f"{name} cites {cited}, which does not exist"


# --------------------------------------------------------------------------------------------------------------------
# Pathological corpora: long runs, one huge document, no special token


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "text",
    [
        "a" * 3000 + " tail",  # one long pre-token of one letter
        "ab" * 1500,  # a repeated two-character piece
        "\n" * 2000 + "x" + " " * 2000,  # whitespace runs
        "=" * 1000 + "0" * 1000 + "é" * 500,  # punctuation, digits, a multi-byte letter
    ],
)
def test_long_runs_match_reference(tmp_path, text, backend):
    """Runs of thousands of one character: the reference's merges (these only double, then combine leftovers)."""
    vocab, merges = train_bpe(write(tmp_path, text), 256 + 40, [], merge_backend=backend, num_workers=1)
    assert (vocab, merges) == naive_train(text, 256 + 40, [])


def test_python_engine_is_linear_on_a_long_run():
    """The Python engine (every problem's, without a C compiler) visits a word once per merge, not once per listed
    occurrence: 200,000 letters took ~25 s when each of a run's 100,000 listings rescanned it; now ~0.3 s."""
    start = time.perf_counter()
    merges = merge_pretokens({b"a" * 200_000: 1}, 30, backend="python")
    assert time.perf_counter() - start < 8
    assert [len(a + b) for a, b in merges[:17]] == [2 << k for k in range(17)]


def test_long_run_is_cheap(tmp_path):
    """A 2 MB run of one letter (one pre-token, no special token, no cut): seconds, not hours, and exact."""
    path = tmp_path / "run.txt"
    path.write_bytes(b"a" * (2 << 20))
    start = time.perf_counter()
    vocab, merges = train_bpe(path, 256 + 100, [], num_workers=2)
    assert time.perf_counter() - start < 30
    assert [len(a + b) for a, b in merges[:21]] == [2 << k for k in range(21)]  # doubling, up to the whole run
    assert b"a" * (2 << 20) in vocab.values()
