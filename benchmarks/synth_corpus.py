"""Synthetic English-like text whose distinct pre-tokens grow with its size as real text's do (Heaps' law).

What `prepare owt` costs at full scale (BPE at vocab 32k over ~11 GB, then `tokenize`) depends on how many distinct
pre-tokens the text holds, and that count keeps growing with the size: D(n) ~ K * n^beta (n in bytes). This
script measures that growth on a real corpus with the package's pre-tokenizer, fits K and beta, and generates text
of any size that follows the fitted curve, so the full-scale run can be simulated on files we can make. See
docs/owt-scale.md for the measurements.

    uv run python benchmarks/synth_corpus.py fit CORPUS --out model.json     # Heaps' curve, fit, generator model
    uv run python benchmarks/synth_corpus.py generate --model model.json --size 1G --seed 0 --out /tmp/synth.txt
    uv run python benchmarks/synth_corpus.py heaps FILE                      # the curve of any file (checks a fit)

The generator draws pre-tokens independently from a vocabulary with two parts:

* the head: every pre-token seen at least twice in the corpus, with its observed frequency (real words, spacing,
  punctuation and newlines, in their real proportions);
* the tail: an unbounded vocabulary of made-up words (" kotaremi", " Basuvi": two-letter syllables, so distinct
  indices give distinct words), index j drawn from a Pareto law, P(j) ~ (1 + j / H)^-a, with total mass `m`.

`a` and `m` are chosen so that the expected distinct count, sum over words of 1 - exp(-N p_word) for N drawn
pre-tokens, follows K n^beta from 64 MiB to 16 GiB. Adjacent draws that would fuse into one pre-token when written
side by side ("the" + "cat" -> "thecat", "\\n" + "\\n", "." + ",") are redrawn, so the text pre-tokenizes back
into the tokens drawn. Documents end after a geometric number of pre-tokens (mean `--doc-bytes`, default 4,700
bytes, OpenWebText's 38 GB over 8.0M documents) and are separated by `<|endoftext|>`.

Deterministic: batch b of the stream depends only on (seed, b), and a file of size X is the prefix of any larger
file with the same seed (cut after the first pre-token that reaches X bytes). Streamed: one batch of 2^20
pre-tokens is in memory at a time.
"""

import argparse
import json
import math
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import regex

from cs336_basics.fileio import atomic_write_json
from cs336_basics.pretokenize import GPT2_RE, WHITESPACE_CHARS, SpecialTokens, first_safe_cut

EOT = "<|endoftext|>"
BATCH = 1 << 20  # pre-tokens drawn at a time
FIT_MIN_BYTES = 1 << 20  # Heaps' law is fitted on prefixes of at least 1 MiB (below, the head of the curve bends)
# The generator's curve is matched to K n^beta over these sizes (bytes): the simulated runs' and OpenWebText's. (Its
# draws are independent, so it lacks real text's bursts of topic-specific words: below ~64 MiB it makes more distinct
# pre-tokens than a prefix of real text of that size, whose few documents share few topics.)
TARGET_RANGE = (64 << 20, 16 << 30)
_CONS = "bcdfghjklmnprstvwxyz"  # 20 consonants x 5 vowels: 100 two-letter syllables
_SYLLABLES = [c + v for c in _CONS for v in "aeiou"]
_TAIL_OFFSET = 100**2  # tail word j spells j + 100^2 in base 100: at least three syllables


# ---------------------------------------------------------------------------------------------------------------------
# Heaps' curve of a file


def heaps_curve(path, min_bytes: int = 1 << 16, growth: float = 2**0.5, counts: Counter | None = None):
    """[(bytes, distinct pre-tokens)] at prefixes of about min_bytes * growth^k bytes and at the end of the file,
    with the package's pre-tokenizer (GPT-2's pattern, `<|endoftext|>` splitting documents and not counted).
    Prefixes end at exact cuts (`pretokenize.first_safe_cut`), so each count is that of the prefix as a file.
    `counts`, when given, receives the count of every pre-token (as str)."""
    specials = SpecialTokens([EOT])
    seen: set[str] = set()
    points = []
    size = os.path.getsize(path)
    pos, target, buf = 0, float(min_bytes), b""
    with open(path, "rb") as f:
        while pos < size:
            want = int(target) - pos
            if len(buf) < want + 4096:
                buf += f.read(want + 4096 - len(buf) + (1 << 16))
            at_eof = pos + len(buf) >= size
            cut = first_safe_cut(buf, min(max(1, want), len(buf)), specials.encoded, at_eof=at_eof)
            if cut is None:
                if at_eof:
                    cut = len(buf)
                else:
                    buf += f.read(1 << 20)
                    continue
            piece, buf = buf[:cut], buf[cut:]
            pos += cut
            for i, text in enumerate(specials.split(piece.decode("utf-8"))):
                if i % 2 == 0 and text:
                    toks = GPT2_RE.findall(text)
                    seen.update(toks)
                    if counts is not None:
                        counts.update(toks)
            points.append((pos, len(seen)))
            while target <= pos:
                target *= growth
    return points


def fit_heaps(points, min_bytes: int = FIT_MIN_BYTES) -> tuple[float, float]:
    """(K, beta) of the least-squares line through log D = log K + beta log n, over the points with n >= min_bytes."""
    n, d = np.array([(b, c) for b, c in points if b >= min_bytes], dtype=np.float64).T
    beta, log_k = np.polyfit(np.log(n), np.log(d), 1)
    return float(math.exp(log_k)), float(beta)


# ---------------------------------------------------------------------------------------------------------------------
# The generator's model


def tail_word(j: int) -> str:
    """The tail's word j: " " + j + 100^2 spelled in two-letter syllables (so distinct j give distinct words),
    capitalised when j % 4 == 0 (the tail of real text is full of names)."""
    x, syl = j + _TAIL_OFFSET, []
    while x:
        x, r = divmod(x, 100)
        syl.append(_SYLLABLES[r])
    word = "".join(syl)
    return " " + (word.capitalize() if j % 4 == 0 else word)


def _tail_word_bytes(j: np.ndarray) -> np.ndarray:
    """Byte lengths of tail_word(j), vectorised: 1 + 2 x the number of base-100 digits of j + 100^2."""
    x = j + _TAIL_OFFSET
    digits = np.ones_like(x)
    for k in range(1, 12):
        digits += x >= 100**k
    return 1 + 2 * digits


def _tail_pareto_j(u: np.ndarray, a: float, scale: float) -> np.ndarray:
    """Tail indices from uniforms: j = floor(scale * (x - 1)), x Pareto with x_min 1 and density (a-1) x^-a."""
    x = np.power(1.0 - u, -1.0 / (a - 1.0))
    return np.floor(np.minimum(scale * (x - 1.0), 1e13)).astype(np.int64)  # (1e13: far past any sample's reach)


def expected_distinct(model: dict, num_tokens: np.ndarray) -> np.ndarray:
    """E[distinct pre-tokens] after drawing N pre-tokens i.i.d. (Poissonised: sum_w 1 - exp(-N p_w)), per N.
    (The redraws that keep adjacent pre-tokens apart are ignored here; `heaps` on generated text checks them.)"""
    if "_head_p_values" not in model:  # the head's probabilities take few values (counts / total): group them
        model["_head_p_values"], model["_head_p_mult"] = np.unique(np.array(model["head_p"]), return_counts=True)
    p_head = model["_head_p_values"] * (1.0 - model["tail_mass"])
    a, scale, m = model["tail_a"], model["tail_scale"], model["tail_mass"]
    # The tail on a log grid of j: mass of [j, j + dj) is m * ((1 + j/s)^(1-a) - (1 + (j+dj)/s)^(1-a)).
    edges = np.concatenate([[0.0], np.geomspace(1.0, 1e13, 2000)])
    cdf = 1.0 - np.power(1.0 + edges / scale, 1.0 - a)
    width = np.diff(edges)
    p_each = m * np.diff(cdf) / width  # each index in a cell has about this probability
    n = np.atleast_1d(np.asarray(num_tokens, dtype=np.float64))[:, None]
    head = (model["_head_p_mult"] * -np.expm1(-n * p_head)).sum(axis=1)
    tail = (width * -np.expm1(-n * p_each)).sum(axis=1)
    return head + tail


def _mean_token_bytes(model: dict) -> float:
    """Mean bytes per drawn pre-token, separators included."""
    if "_head_mean_bytes" not in model:
        model["_head_mean_bytes"] = float(np.dot(model["head_p"], model["head_bytes"]))
    rng = np.random.default_rng(0)
    tail = float(_tail_word_bytes(_tail_pareto_j(rng.random(1 << 14), model["tail_a"], model["tail_scale"])).mean())
    m = model["tail_mass"]
    return (1.0 - m) * model["_head_mean_bytes"] + m * tail + len(EOT) / model["doc_tokens"]


def _curve_error(model: dict, k: float, beta: float) -> float:
    n_bytes = np.geomspace(*TARGET_RANGE, 24)
    got = expected_distinct(model, n_bytes / _mean_token_bytes(model))
    return float(np.sqrt(np.mean((np.log(got) - np.log(k * n_bytes**beta)) ** 2)))


def build_model(corpus, doc_bytes: int = 4700, log=print) -> dict:
    """Measure the corpus's Heaps curve, fit (K, beta), and choose the tail's exponent and mass so the generator's
    expected curve follows K n^beta over TARGET_RANGE. Returns the model as a JSON-able dict."""
    counts: Counter = Counter()
    t0 = time.perf_counter()
    points = heaps_curve(corpus, counts=counts)
    k, beta = fit_heaps(points)
    log(
        f"{corpus}: {points[-1][0]:,} bytes, {points[-1][1]:,} distinct pre-tokens; K = {k:.3f}, beta = {beta:.4f} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    total = sum(counts.values())
    head = sorted(((c, t) for t, c in counts.items() if c >= 2), reverse=True)
    head_p = np.array([c for c, _ in head], dtype=np.float64)
    head_p /= head_p.sum()
    model = {
        "corpus": str(corpus),
        "corpus_bytes": points[-1][0],
        "heaps_points": points,
        "K": k,
        "beta": beta,
        "head_tokens": [t for _, t in head],
        "head_p": head_p.tolist(),
        "head_bytes": [len(t.encode("utf-8")) for _, t in head],
        "tail_scale": float(len(head)),
        "doc_bytes": doc_bytes,
    }
    hapax_mass = sum(1 for c in counts.values() if c == 1) / total
    model["doc_tokens"] = doc_bytes / 4.5  # refined below, once the mean pre-token length is known
    best = None
    for a in np.arange(1.04, 2.41, 0.02):
        for m in hapax_mass * np.geomspace(0.25, 4.0, 41):
            model.update(tail_a=float(a), tail_mass=float(m))
            err = _curve_error(model, k, beta)
            if best is None or err < best[0]:
                best = (err, float(a), float(m))
    err, a, m = best
    model.update(tail_a=a, tail_mass=m)
    model["doc_tokens"] = doc_bytes / _mean_token_bytes(model)
    model["fit_rms_log_error"] = err
    for key in [k for k in model if k.startswith("_")]:  # caches
        del model[key]
    log(
        f"head: {len(head):,} pre-tokens seen twice or more; tail: a = {a:.2f}, mass = {m:.4f} (hapax mass "
        f"{hapax_mass:.4f}); expected curve vs K n^beta over 64 MiB-16 GiB: rms log error {err:.3f}"
    )
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Generation

_LETTER = regex.compile(r"\p{L}")
_NUMBER = regex.compile(r"\p{N}")


def _char_class(ch: str) -> int:
    """1 letter, 2 number, 4 whitespace, 3 anything else: the classes of GPT-2's pattern."""
    if ch in WHITESPACE_CHARS:
        return 4
    return 1 if _LETTER.match(ch) else 2 if _NUMBER.match(ch) else 3


def _classes(tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per token, the class of its start (6: a space then a non-space, which nothing before it can fuse with
    unless that ends in a space) and of its end (5: whitespace ending in " ", which a following letter, digit or
    mark would absorb)."""
    first = np.empty(len(tokens), dtype=np.int8)
    last = np.empty(len(tokens), dtype=np.int8)
    for i, t in enumerate(tokens):
        first[i] = 6 if len(t) > 1 and t[0] == " " and _char_class(t[1]) != 4 else _char_class(t[0])
        last[i] = 5 if t[-1] == " " else _char_class(t[-1])
    return first, last


def _fuses(last: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Would a token ending in class `last` followed by one starting in class `first` pre-tokenize differently?"""
    same = (first == last) & (first <= 4)
    space_then = (last == 5) & (first <= 4)
    ws_then_ws = (last >= 4) & (last <= 5) & (first == 4)
    return same | space_then | ws_then_ws


class Generator:
    """The token stream of a model and a seed, batch by batch (batch b depends only on seed and b)."""

    def __init__(self, model: dict, seed: int):
        self.model, self.seed = model, seed
        self.head = np.array(model["head_tokens"], dtype=object)
        self.head_bytes = np.array(model["head_bytes"], dtype=np.int64)
        self.cdf = np.cumsum(model["head_p"])
        self.cdf /= self.cdf[-1]
        self.first, self.last = _classes(model["head_tokens"])
        self.first = np.append(self.first, 6)  # code H stands for "a tail word": " " + letters
        self.last = np.append(self.last, 1)

    def _draw(self, rng, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n draws: (head index, or H for a tail word; the tail index where it is one, else -1)."""
        m = self.model
        tail = rng.random(n) < m["tail_mass"]
        ids = np.searchsorted(self.cdf, rng.random(n), side="right")
        ids = np.minimum(ids, len(self.head) - 1)
        j = _tail_pareto_j(rng.random(n), m["tail_a"], m["tail_scale"])
        ids[tail] = len(self.head)
        j[~tail] = -1
        return ids, j

    def batch(self, b: int, prev_last: int) -> tuple[list[str], np.ndarray, int]:
        """Batch b: (its pre-tokens, their byte lengths, the class its last one ends in). `prev_last`: the class
        the previous batch ended in (4, whitespace, before the first)."""
        rng = np.random.default_rng([self.seed, b])
        ids, j = self._draw(rng, BATCH)
        for _ in range(100):  # redraw what would fuse with its left neighbour (each round leaves ~5% of the last)
            lasts = np.concatenate([[prev_last], self.last[ids[:-1]]])
            bad = np.flatnonzero(_fuses(lasts, self.first[ids]))
            if bad.size == 0:
                break
            bad = bad[np.concatenate([[True], np.diff(bad) > 1])]  # only the first of a run: its right one changes
            new_ids, new_j = self._draw(rng, bad.size)
            ids[bad], j[bad] = new_ids, new_j
        else:
            raise RuntimeError("could not separate adjacent pre-tokens in 100 rounds")
        is_tail = j >= 0
        tokens = self.head[np.minimum(ids, len(self.head) - 1)]
        lens = self.head_bytes[np.minimum(ids, len(self.head) - 1)]
        tails = np.flatnonzero(is_tail)
        tokens[tails] = [tail_word(x) for x in j[tails].tolist()]
        lens[tails] = _tail_word_bytes(j[tails])
        ends = np.flatnonzero(rng.random(BATCH) < 1.0 / self.model["doc_tokens"])  # a document ends after these
        tokens[ends] = [t + EOT for t in tokens[ends].tolist()]
        lens[ends] += len(EOT)
        last = 4 if ends.size and ends[-1] == BATCH - 1 else int(self.last[ids[-1]])
        return tokens.tolist(), lens, last


def generate(model: dict, size: int, out, seed: int = 0, log=None) -> int:
    """Write the first pre-tokens of the stream (seed) to `out` until at least `size` bytes; returns the bytes.
    Written to a temporary file and renamed, so `out` is complete or absent."""
    gen = Generator(model, seed)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    written, b, prev_last, t0 = 0, 0, 4, time.perf_counter()
    with open(tmp, "wb") as f:
        while written < size:
            tokens, lens, prev_last = gen.batch(b, prev_last)
            cum = np.cumsum(lens)
            stop = int(np.searchsorted(cum, size - written, side="left")) + 1  # tokens up to reaching `size`
            data = "".join(tokens[:stop]).encode("utf-8")
            f.write(data)
            written += len(data)
            b += 1
            if log is not None and b % 64 == 0:
                log(f"{written / 2**20:,.0f} MiB, {written / 2**20 / (time.perf_counter() - t0):.1f} MiB/s")
    os.replace(tmp, out)
    return written


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def parse_size(text: str) -> int:
    """'250M', '1G', '1.5G', '4096' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)i?[bB]?\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"size={text!r} must be a number of bytes with an optional K, M or G")
    return int(float(m.group(1)) * 1024 ** "-kmg".index(m.group(2).lower() or "-"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="measure a corpus's Heaps curve, fit K and beta, write the generator's model")
    f.add_argument("corpus")
    f.add_argument("--out", required=True, help="model JSON")
    f.add_argument("--doc-bytes", type=int, default=4700, help="mean document length of the generated text")
    g = sub.add_parser("generate", help="write synthetic text")
    g.add_argument("--model", required=True)
    g.add_argument("--size", type=parse_size, required=True, help="bytes, e.g. 250M, 1G")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True)
    h = sub.add_parser("heaps", help="distinct pre-tokens of a file's prefixes, against a model's K n^beta")
    h.add_argument("file")
    h.add_argument("--model", help="print K n^beta of this model beside each point")
    h.add_argument("--json", help="also write the points here")
    args = p.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.cmd == "fit":
        model = build_model(args.corpus, args.doc_bytes, log=log)
        atomic_write_json(args.out, model)
    elif args.cmd == "generate":
        model = json.loads(Path(args.model).read_text())
        t0 = time.perf_counter()
        n = generate(model, args.size, args.out, args.seed, log=log)
        log(f"wrote {n:,} bytes to {args.out} in {time.perf_counter() - t0:.1f} s")
    else:
        model = json.loads(Path(args.model).read_text()) if args.model else None
        t0 = time.perf_counter()
        points = heaps_curve(args.file)
        k, beta = fit_heaps(points) if points[-1][0] >= 2 * FIT_MIN_BYTES else (float("nan"), float("nan"))
        for n, d in points:
            want = model["K"] * n ** model["beta"] if model else 0.0
            fitted = f"  K n^beta {want:>12,.0f}  ratio {d / want:.3f}" if model else ""
            print(f"{n:>14,} bytes {d:>12,} distinct{fitted}")
        print(f"this file: K = {k:.3f}, beta = {beta:.4f} ({time.perf_counter() - t0:.1f} s)")
        if args.json:
            atomic_write_json(args.json, {"points": points, "K": k, "beta": beta})


if __name__ == "__main__":
    main()
