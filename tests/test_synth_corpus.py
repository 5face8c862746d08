"""benchmarks/synth_corpus.py: the synthetic-text generator behind docs/owt-scale.md (deterministic, streamed, and
its distinct pre-tokens grow as its model says)."""

import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cs336_basics.pretokenize import GPT2_RE, SpecialTokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import synth_corpus as sc  # noqa: E402


def _model(head_size: int = 3000, tail_a: float = 1.5, tail_mass: float = 0.02) -> dict:
    """A small hand-made model: Zipf-weighted head words of every class the fusion rule must keep apart."""
    rng = random.Random(0)
    words = set()
    while len(words) < head_size:
        words.add("".join(rng.choice("etaoinshrdlu") for _ in range(rng.randint(2, 9))))
    head = ["\n", "\n\n", " ", "  ", ".", ",", "--", "'s", "'", "42", " 7", " (", "The", "é", " café", "\t"]
    head += [" " + w for w in sorted(words)] + sorted(words)[:200]
    p = 1.0 / np.arange(1, len(head) + 1)
    return {
        "K": 1.0,
        "beta": 0.6,
        "head_tokens": head,
        "head_p": (p / p.sum()).tolist(),
        "head_bytes": [len(t.encode()) for t in head],
        "tail_scale": float(len(head)),
        "tail_a": tail_a,
        "tail_mass": tail_mass,
        "doc_tokens": 300.0,
    }


def test_generate_is_deterministic_and_a_prefix_of_longer_output(tmp_path):
    model = _model()
    a, b, c, d = (tmp_path / x for x in "abcd")
    assert sc.generate(model, 300_000, a, seed=0) >= 300_000
    sc.generate(model, 300_000, b, seed=0)
    sc.generate(model, 1_500_000, c, seed=0)  # more than one batch
    sc.generate(model, 300_000, d, seed=1)
    assert a.read_bytes() == b.read_bytes()
    assert c.read_bytes().startswith(a.read_bytes())
    assert d.read_bytes()[:1000] != a.read_bytes()[:1000]
    assert not list(tmp_path.glob("*.tmp"))


def test_generated_text_pretokenizes_into_the_drawn_tokens(tmp_path):
    """Adjacent draws that GPT-2's pattern would fuse ("the" + "cat", "\\n" + "\\n", "." + ",") were redrawn:
    every pre-token of the text is a head token or a tail word, and documents are separated by <|endoftext|>."""
    model = _model()
    out = tmp_path / "t.txt"
    sc.generate(model, 400_000, out, seed=3)
    text = out.read_text(encoding="utf-8")
    parts = SpecialTokens([sc.EOT]).split(text)
    assert 400_000 / 4 / 300 / 2 < len(parts) // 2 < 400_000 / 300 * 2  # about one document per 300 pre-tokens
    head = set(model["head_tokens"])
    tail = sc.regex.compile(r" [A-Za-z][a-z]{5,}")
    toks = Counter(t for doc in parts[::2] for t in GPT2_RE.findall(doc))
    strays = {t: n for t, n in toks.items() if t not in head and not tail.fullmatch(t)}
    assert not strays, list(strays.items())[:10]


def test_tail_words_are_distinct_and_sized():
    js = np.array([0, 1, 99, 100, 9_899, 9_900, 10**6, 10**9, 10**12])
    words = [sc.tail_word(int(j)) for j in js]
    assert len(set(words)) == len(words)
    assert [len(w.encode()) for w in words] == sc._tail_word_bytes(js).tolist()
    assert words[0][1].isupper() and words[1][1].islower()
    u = np.random.default_rng(0).random(100_000)
    j = sc._tail_pareto_j(u, 1.5, 1000.0)
    assert j.min() >= 0 and abs(np.median(j) - 1000 * (2**2 - 1)) < 150  # Pareto(a=1.5): median x = 2^(1/0.5)


def test_fit_heaps_recovers_a_power_law():
    points = [(n, round(3.0 * n**0.62)) for n in np.geomspace(1e5, 1e9, 20).astype(int)]
    k, beta = sc.fit_heaps(points)
    assert abs(beta - 0.62) < 1e-3 and abs(k - 3.0) / 3.0 < 0.01


def test_distinct_pretokens_grow_as_the_model_expects(tmp_path):
    """The generated text's Heaps curve (measured with the package's pre-tokenizer) follows the model's expected
    distinct count within a few percent, and its growth exponent is the model's."""
    model = _model(tail_a=1.6, tail_mass=0.03)
    out = tmp_path / "g.txt"
    sc.generate(model, 3_000_000, out, seed=0)
    points = [(n, d) for n, d in sc.heaps_curve(out, min_bytes=1 << 18) if n >= 1 << 18]
    n = np.array([p[0] for p in points], dtype=np.float64)
    got = np.array([p[1] for p in points], dtype=np.float64)
    want = sc.expected_distinct(model, n / sc._mean_token_bytes(model))
    assert np.all(np.abs(got / want - 1) < 0.06), list(zip(n, got, want, strict=True))
    slope_got = np.polyfit(np.log(n), np.log(got), 1)[0]
    slope_want = np.polyfit(np.log(n), np.log(want), 1)[0]
    assert abs(slope_got - slope_want) < 0.03, (slope_got, slope_want)


def test_parse_size():
    assert sc.parse_size("250M") == 250 << 20 and sc.parse_size("1.5G") == 3 << 29 and sc.parse_size("4096") == 4096
    with pytest.raises(Exception, match="size='12X'"):
        sc.parse_size("12X")
