"""Pre-tokenization rules (cs336_basics.pretokenize): the pattern's ASCII twin, the whitespace class, the
special-token splitter, and the safe cuts, each against the plain reference
(cs336_basics._tokenization.tokenizer_reference)."""

from pathlib import Path

import pytest
import regex
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cs336_basics import pretokenize
from cs336_basics._tokenization.tokenizer_reference import pretokenize as reference_pretokenize
from cs336_basics._tokenization.tokenizer_reference import split_special_tokens
from cs336_basics.pretokenize import (
    GPT2_ASCII_BYTES_RE,
    GPT2_ASCII_RE,
    GPT2_PATTERN,
    PIECE_RE,
    WHITESPACE_CHARS,
    SpecialTokens,
    first_safe_cut,
    last_safe_cut,
    straddles,
)

PACKAGE = Path(pretokenize.__file__).parent


def test_whitespace_class_matches_regex_module():
    """The explicit whitespace class equals `regex`'s \\s (what the GPT-2 pattern uses)."""
    expected = "".join(regex.findall(r"\s", "".join(map(chr, range(0x110000)))))
    assert WHITESPACE_CHARS == expected
    assert pretokenize.ASCII_WHITESPACE == "".join(c for c in expected if c.isascii())


ASCII_REPRESENTATIVES = "aZs'ldvmtre0 \t\n\x0b\x0c\r\x1c\x1f.-_~\x00\x7f"


def test_ascii_pretokenizer_equals_gpt2_pattern_exhaustively():
    """The stdlib-`re` ASCII twin splits like GPT2_PATTERN on every string of up to 4 representative ASCII chars
    (letters of the contractions, digits, every class of whitespace, \\x1c-\\x1f, punctuation, controls)."""
    gpt2_re = regex.compile(GPT2_PATTERN)
    strings = [""]
    for _ in range(4):
        strings = [s + c for s in strings for c in ASCII_REPRESENTATIVES]
        joined = "|".join(strings)  # one call over all of them, then the same on each alone for a sample
        assert GPT2_ASCII_RE.findall(joined) == gpt2_re.findall(joined)
        assert GPT2_ASCII_BYTES_RE.findall(joined.encode()) == [t.encode() for t in gpt2_re.findall(joined)]
    for s in strings[::37]:
        assert GPT2_ASCII_RE.findall(s) == gpt2_re.findall(s), repr(s)


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_ascii_pretokenizer_equals_gpt2_pattern_random(text):
    assert GPT2_ASCII_RE.findall(text) == regex.findall(GPT2_PATTERN, text)


def test_gpt2_pattern_is_written_once_in_the_package():
    fragment = r"'(?:[sdmt]|ll|ve|re)"
    holders = [p.name for p in PACKAGE.rglob("*.py") if fragment in p.read_text(encoding="utf-8")]
    assert holders == ["pretokenize.py"]


@given(st.text(alphabet=st.sampled_from(list(WHITESPACE_CHARS + "a\x1c.é日🙂\u200b")), max_size=40))
def test_pieces_pretokenize_independently(text):
    """Pre-tokenizing each piece alone gives the pre-tokens of the whole text (what every cache relies on)."""
    pieces = PIECE_RE.findall(text)
    assert "".join(pieces) == text
    assert [t for p in pieces for t in regex.findall(GPT2_PATTERN, p)] == regex.findall(GPT2_PATTERN, text)


# ---------------------------------------------------------------------------------------------- special tokens

SPECIAL_SETS = [
    ["<|a|>", "<|a|>x"],  # the longer is not two copies of the shorter
    ["<|endoftext|>", "<|endoftext|><|endoftext|>"],
    ["aa"],  # 2 bytes, overlaps itself
    ["aba", "b"],  # overlaps itself; one token inside another
    ["é"],  # one 2-byte character
    ["x\ny", "\n"],  # holding a newline
    [" \n", "a b"],  # holding spaces
]
FRAGMENTS = ["a", "b", "x", "y", "s", "'", "1", " ", "  ", "\n", ".", "é", "日", "<|a|>", "<|", "|>", "<|endoftext|>"]


def _texts():
    return st.lists(st.sampled_from(FRAGMENTS + ["aa", "aba", "x\ny", " \n", "a b"]), max_size=25).map("".join)


@pytest.mark.parametrize("specials", SPECIAL_SETS)
@given(text=_texts())
def test_special_split_equals_longest_first_scan(specials, text):
    parts = SpecialTokens(specials).split(text)
    expected = split_special_tokens(text, specials)
    ours = [(p, i % 2 == 1) for i, p in enumerate(parts) if p or i % 2]
    assert ours == expected


def test_longest_special_wins():
    assert SpecialTokens(["<|a|>", "<|a|>x"]).split("<|a|>x<|a|>") == ["", "<|a|>x", "", "<|a|>", ""]
    assert SpecialTokens(["<|a|>x", "<|a|>"]).split("<|a|><|a|>x") == ["", "<|a|>", "", "<|a|>x", ""]
    with pytest.raises(ValueError, match="non-empty strings"):
        SpecialTokens(["ok", ""])


def test_straddles():
    assert straddles(b"xaay", 2, [b"aa"]) and not straddles(b"xaay", 1, [b"aa"]) and not straddles(b"xaay", 3, [b"aa"])
    assert straddles("x\ny", 1, ["x\ny"]) and straddles("x\ny", 2, ["x\ny"])
    assert not straddles("ab", 1, [])


def _exact_at(text: str, cut: int, specials: list[str]) -> bool:
    return reference_pretokenize(text[:cut], specials) + reference_pretokenize(text[cut:], specials) == (
        reference_pretokenize(text, specials)
    )


@pytest.mark.parametrize("specials", SPECIAL_SETS)
@settings(max_examples=150)
@given(text=_texts(), data=st.data())
def test_first_safe_cut_is_exact(specials, text, data):
    """Every cut found in any window of the text (holding max_len - 1 bytes before `lo`) splits it exactly."""
    raw = text.encode("utf-8")
    specials_b = [s.encode("utf-8") for s in specials]
    max_len = max(map(len, specials_b))
    target = data.draw(st.integers(0, len(raw)))
    base = max(0, target - max_len)
    end = data.draw(st.integers(target, len(raw)))
    cut = first_safe_cut(raw[base:end], target - base, specials_b, at_eof=end == len(raw))
    if cut is not None:
        cut += base
        assert target <= cut <= len(raw)
        prefix = raw[:cut].decode("utf-8")  # raises if the cut fell inside a character
        assert _exact_at(text, len(prefix), specials), (text, cut)


def test_first_safe_cut_skips_straddled_candidates():
    # the special "a b" holds a space: the cut before its space is straddled; the next one is taken
    assert first_safe_cut(b"a b yy", 1, [b"a b"], at_eof=True) == 3  # after "a b", not inside it
    assert first_safe_cut(b"aaaa bb", 1, [b"aa"], at_eof=True) == 4  # every "aa" start is straddled: the space
    assert first_safe_cut(b"xx", 0, [b"<|e|>"]) is None  # too short to see a straddler


@pytest.mark.parametrize("specials", SPECIAL_SETS + [[]])
@settings(max_examples=150)
@given(text=_texts(), rest=_texts())
@example(text="1 <|a|>", rest="x")  # a longer special token may still begin at the end of the buffer
@example(text="x \na", rest="ab")
def test_last_safe_cut_is_final(specials, text, rest):
    """The cut of a buffer stays exact whatever text comes after it."""
    cut = last_safe_cut(text, SpecialTokens(specials))
    assert 0 <= cut <= len(text)
    if cut:
        whole = text + rest
        assert reference_pretokenize(text[:cut], specials) + reference_pretokenize(whole[cut:], specials) == (
            reference_pretokenize(whole, specials)
        )


def test_last_safe_cut_uses_class_changes_only_in_long_runs():
    specials = SpecialTokens([])
    assert last_safe_cut("abc.def", specials) == 0  # short: no class cut
    long = "a" * 5000 + "." + "b" * 10
    assert last_safe_cut(long, specials) == 5000
    assert last_safe_cut("x" * 10000, specials) == 0  # one run: nothing is exact
