"""Extrapolate benchmarks/owt_scale.py's measurements to OpenWebText's size (11.92 GB) on 2 and 16 cores.

    uv run python benchmarks/owt_extrapolate.py RESULTS.jsonl --model MODEL.json [--bytes 11920511059]

The model of each stage (docs/owt-scale.md says why):

* pre-tokenization (train-bpe's workers) and tokenization: CPU seconds proportional to the bytes (a line through the
  origin, fitted by least squares), spread over the cores: wall = CPU / cores;
* the merge (with the serial work around it: summing the workers' counts, writing the files): serial, CPU seconds
  a power law of the distinct pre-tokens D, fitted in log-log; D at the target size from the Heaps law K n^beta
  that the synthetic text follows (MODEL.json, from `synth_corpus.py fit`);
* peak memory: a line in D (train-bpe) and the peak per process (tokenize); each fitted line is shown with its
  residuals against the alternative in the bytes, so a peak that grows with the corpus is visible.

Wall-clock estimates assume the cores are free: on this shared machine the measured wall times are CPU seconds
stretched by the other jobs (the JSON has the load average of each run).
"""

import argparse
import json

import numpy as np


def fit_through_origin(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(np.dot(x, y) / np.dot(x, x))


def fit_line(x, y) -> tuple[float, float, float]:
    """(intercept, slope, max relative residual) of the least-squares line."""
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    pred = intercept + slope * np.asarray(x, float)
    return float(intercept), float(slope), float(np.max(np.abs(pred / np.asarray(y, float) - 1)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results")
    p.add_argument("--model", required=True)
    p.add_argument("--bytes", type=int, default=11_920_511_059, help="target size (default: owt_train.txt)")
    p.add_argument("--min-bytes", type=int, default=200 << 20, help="fit only on files at least this large")
    p.add_argument("--cores", default="2,16")
    args = p.parse_args(argv)
    model = json.load(open(args.model))
    rows = [json.loads(line) for line in open(args.results)]
    rows = [r for r in rows if r["bytes"] >= args.min_bytes]
    n = np.array([r["bytes"] for r in rows], float)
    bpe = [r["train_bpe"] for r in rows]
    d = np.array([b["distinct_pretokens"] for b in bpe], float)
    merge_cpu = np.array([b["merge_cpu_s"] for b in bpe], float)
    pre_cpu = np.array([b["cpu_s"] for b in bpe], float) - merge_cpu
    tok_cpu = np.array([r["tokenize"]["cpu_s"] for r in rows], float)

    k, beta = model["K"], model["beta"]
    d_target = k * args.bytes**beta
    print(f"files: {', '.join(f'{x / 2**30:.2f} GiB' for x in n)}; target {args.bytes:,} bytes")
    vs = [f"{x:,.0f} vs {k * m**beta:,.0f} ({x / (k * m**beta):.3f})" for x, m in zip(d, n, strict=True)]
    print("distinct pre-tokens, measured vs K n^beta: " + ", ".join(vs))
    print(f"D at the target: K n^beta = {k:.3f} x {args.bytes:.3g}^{beta:.4f} = {d_target:,.0f}")

    pre_per_gb = fit_through_origin(n, pre_cpu) * 1e9
    tok_per_gb = fit_through_origin(n, tok_cpu) * 1e9
    gamma, log_c = np.polyfit(np.log(d), np.log(merge_cpu), 1)
    merge_target = float(np.exp(log_c) * d_target**gamma)
    print(f"pre-tokenize CPU: {pre_per_gb:.1f} s per GB (measured: "
          + ", ".join(f"{c / m * 1e9:.1f}" for c, m in zip(pre_cpu, n, strict=True)) + ")")  # fmt: skip
    print(f"tokenize CPU: {tok_per_gb:.1f} s per GB (measured: "
          + ", ".join(f"{c / m * 1e9:.1f}" for c, m in zip(tok_cpu, n, strict=True)) + ")")  # fmt: skip
    print(
        f"merge + serial CPU: {', '.join(f'{c:.1f}' for c in merge_cpu)} s; ~ D^{gamma:.2f}; at the target "
        f"{merge_target:.0f} s"
    )

    peak = np.array([b["peak_tree_mb"] for b in bpe], float)
    a_d, b_d, res_d = fit_line(d, peak)
    a_n, b_n, res_n = fit_line(n, peak)
    peak_target = a_d + b_d * d_target
    print(
        f"train-bpe peak (tree): {', '.join(f'{x:.0f}' for x in peak)} MB; line in D: {a_d:.0f} MB + "
        f"{b_d * 1e6:.0f} MB per million distinct (max residual {res_d:.1%}); line in bytes: {a_n:.0f} MB + "
        f"{b_n * 1e9:.0f} MB per GB (max residual {res_n:.1%}); at the target (line in D): {peak_target:,.0f} MB"
    )
    tok_peak = np.array([r["tokenize"]["peak_proc_mb"] for r in rows], float)
    tok_tree = np.array([r["tokenize"]["peak_tree_mb"] for r in rows], float)
    print(
        f"tokenize peak: largest process {', '.join(f'{x:.0f}' for x in tok_peak)} MB, tree "
        f"{', '.join(f'{x:.0f}' for x in tok_tree)} MB"
    )
    for cores in map(int, args.cores.split(",")):
        bpe_wall = args.bytes / 1e9 * pre_per_gb / cores + merge_target
        tok_wall = args.bytes / 1e9 * tok_per_gb / cores
        print(
            f"{cores} cores: train-bpe ~{bpe_wall / 60:.1f} min (pre-tokenize "
            f"{args.bytes / 1e9 * pre_per_gb / cores / 60:.1f} + merge {merge_target / 60:.1f}), tokenize "
            f"~{tok_wall / 60:.1f} min, tokenize peak ~{cores * tok_peak.max() / 1024:.1f} GB "
            f"({cores} x the largest process)"
        )


if __name__ == "__main__":
    main()
