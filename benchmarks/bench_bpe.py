"""BPE training: our `train_bpe` against Hugging Face `tokenizers` (1 and 2 threads) on the same corpus, same run.

Each trainer runs in its own subprocess, so peak memory is its own. For each we report wall time (the subprocess's
own timing of the training call, and the whole subprocess including imports), peak RSS summed over the process
tree (sampled every 10 ms with psutil) and ru_maxrss of the process itself and of its largest child. Ours also
reports its split between pre-tokenization and merging.

    uv run python benchmarks/bench_bpe.py CORPUS --vocab-size 10000 --repeat 3 --cold

`--cold` adds a run of ours with empty caches (a fresh CS336_CACHE_DIR each round): the first run
on a fresh checkout, which builds the C merge engine. `--backends auto,python` adds a row per merge backend
(`train_bpe(merge_backend=...)`). Rounds interleave the trainers; the table shows each one's median
round and the ratios are of medians.

Hugging Face is configured as GPT-2 is: ByteLevel pre-tokenizer with its regex, BpeTrainer with the 256-byte
initial alphabet and the same special token. It reads the file line by line, so its pre-tokens around newlines
differ slightly from ours; it is a speed peer here, not an oracle.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

OURS = r"""
import json, resource, sys, time
t_start = time.perf_counter()
from cs336_basics.bpe import TrainStats, train_bpe
t_import = time.perf_counter() - t_start
path, vocab_size, workers, special = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
times = []
for _ in range(int(sys.argv[5])):
    stats = TrainStats()
    t0 = time.perf_counter()
    vocab, merges = train_bpe(path, vocab_size, [special], num_workers=workers, stats=stats, merge_backend=sys.argv[6])
    times.append(time.perf_counter() - t0)
t, first = min(times), times[0]
ru_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
ru_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"train_s": t, "first_s": first, "import_s": t_import, "pretokenize_s": stats.pretokenize_s,
                  "merge_s": stats.merge_s, "pretokens": stats.num_pretokens, "merges": len(merges),
                  "engine": stats.merge_backend, "ru_self_mb": ru_self, "ru_child_mb": ru_child}))
"""

HF = r"""
import json, resource, sys, time
t_start = time.perf_counter()
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
t_import = time.perf_counter() - t_start
path, vocab_size, special = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[special], show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
times = []
for _ in range(int(sys.argv[4])):
    t0 = time.perf_counter()
    tok.train([path], trainer)
    times.append(time.perf_counter() - t0)
t, first = min(times), times[0]
ru_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"train_s": t, "first_s": first, "import_s": t_import, "merges": tok.get_vocab_size() - 257,
                  "ru_self_mb": ru_self, "ru_child_mb": 0.0}))
"""


def run_measured(argv: list[str], env: dict) -> dict:
    """Run argv, sampling the RSS of its whole process tree; return its JSON line plus wall and peak tree RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [ps, *ps.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        peak = max(peak, total)
        time.sleep(0.01)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}):\n{err}")
    result = json.loads(out.strip().splitlines()[-1])
    result["process_s"] = wall
    result["tree_peak_mb"] = peak / 2**20
    return result


def _median_round(results: list[dict]) -> dict:
    """The round whose whole-process time is the median (the lower middle one for an even count)."""
    ordered = sorted(results, key=lambda r: r["process_s"])
    median = ordered[(len(ordered) - 1) // 2]
    assert statistics.median_low([r["process_s"] for r in results]) == median["process_s"]
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", help="path to a UTF-8 text file")
    parser.add_argument("--vocab-size", type=int, required=True, help="vocabulary size (tokens)")
    parser.add_argument("--special-token", default="<|endoftext|>", help="the one special token (default %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="our worker processes (default: CPUs)")
    parser.add_argument("--skip-hf", action="store_true", help="run only ours (e.g. for a memory check)")
    parser.add_argument("--cold", action="store_true", help="also run ours with empty caches (first use)")
    parser.add_argument("--backends", default="auto", help="our merge backends, comma-separated (default auto)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each round runs every trainer once (default 1)")
    parser.add_argument(
        "--in-process",
        type=int,
        default=1,
        help="trainings per subprocess; 'train s' is the best, 'first s' the first (default 1)",
    )
    args = parser.parse_args()
    if args.cold and args.backends.split(",")[0] != "auto":
        parser.error(f"--cold compares a first run of 'auto' with the first of --backends, so list auto first: "
                     f"--backends={args.backends!r}")  # fmt: skip

    ours_argv = [sys.executable, "-c", OURS, args.corpus, str(args.vocab_size), str(args.workers), args.special_token]
    ours_argv.append(str(args.in_process))
    backends = args.backends.split(",")
    runs = {f"ours ({args.workers} proc{'' if b == 'auto' else ', ' + b})": (ours_argv + [b], {}) for b in backends} | {
        "HF tokenizers (1 thread)": (
            [sys.executable, "-c", HF, args.corpus, str(args.vocab_size), args.special_token, str(args.in_process)],
            {"RAYON_NUM_THREADS": "1"},
        ),
        "HF tokenizers (2 threads)": (
            [sys.executable, "-c", HF, args.corpus, str(args.vocab_size), args.special_token, str(args.in_process)],
            {"RAYON_NUM_THREADS": "2"},
        ),
    }
    if args.skip_hf:
        runs = dict(list(runs.items())[: len(backends)])
    if args.cold:
        first = next(iter(runs))
        runs = {first: runs[first], "ours, empty caches": (ours_argv + ["auto"], {"cold": "1"}), **runs}
    rounds: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, (argv, extra_env) in runs.items():  # interleaved, so load changes hit every trainer alike
            env = {**os.environ, **extra_env}
            cache = None
            if env.pop("cold", None):
                cache = tempfile.mkdtemp(prefix="empty-caches-")
                env["CS336_CACHE_DIR"] = os.path.join(cache, "cs336")
            try:
                rounds[name].append(run_measured(argv, env))
            finally:
                if cache is not None:
                    shutil.rmtree(cache, ignore_errors=True)
    best = {name: _median_round(rs) for name, rs in rounds.items()}

    size_mb = os.path.getsize(args.corpus) / 1e6
    print(
        f"corpus {args.corpus} ({size_mb:.1f} MB), vocab {args.vocab_size}, median of {args.repeat} "
        f"rounds x {args.in_process} trainings per process (train s: the best in the process)"
    )
    print(f"{'trainer':28s} {'train s':>8s} {'first s':>8s} {'process s':>9s} {'pretok s':>8s} {'merge s':>8s} "
          f"{'tree peak MB':>12s} {'ru self MB':>10s} {'ru child MB':>11s}")  # fmt: skip
    for name, r in best.items():
        pre = f"{r['pretokenize_s']:8.2f}" if "pretokenize_s" in r else f"{'':8s}"
        mer = f"{r['merge_s']:8.2f}" if "merge_s" in r else f"{'':8s}"
        print(
            f"{name:28s} {r['train_s']:8.3f} {r['first_s']:8.3f} {r['process_s']:9.2f} {pre} {mer} "
            f"{r['tree_peak_mb']:12.0f} {r['ru_self_mb']:10.0f} {r['ru_child_mb']:11.0f}"
        )
    ours = best[next(iter(runs))]
    if args.cold:
        cold = best["ours, empty caches"]
        print(f"ours, empty cache / warm: process {cold['process_s'] / ours['process_s']:.2f}x")
        for name in [n for n in runs if n.startswith("HF")]:
            print(f"ours, empty cache / {name}: process {cold['process_s'] / best[name]['process_s']:.2f}x")
    for name in [n for n in list(runs)[1:] if n.startswith("HF")]:
        print(f"ours / {name}: train {ours['train_s'] / best[name]['train_s']:.2f}x, "
              f"process {ours['process_s'] / best[name]['process_s']:.2f}x")  # fmt: skip
    print(f"ours: {ours['pretokens']} distinct pre-tokens, {ours['merges']} merges, engines: "
          + ", ".join(f"{name}: {r['engine']}" for name, r in best.items() if "engine" in r))  # fmt: skip


if __name__ == "__main__":
    main()
