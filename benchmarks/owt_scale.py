"""What `prepare owt` costs at full scale, simulated: `train-bpe` at vocab 32k and `tokenize` on synthetic text files
(benchmarks/synth_corpus.py) of growing size, one job at a time, each measured from outside its process tree.

    uv run python benchmarks/owt_scale.py FILE [FILE ...] --workers 2 --json results.jsonl

For each FILE: `cs336-basics train-bpe FILE --vocab-size 32000 --special-token '<|endoftext|>' --out DIR --workers N
--no-progress`, then `cs336-basics tokenize FILE --tokenizer DIR --out TMP.bin --workers N --no-progress`. Reported
per job: wall seconds; CPU seconds of the whole process tree (os.wait4's rusage, which counts the workers it
reaped); peak RSS summed over the tree, of the tree while the parent has children (train-bpe: pre-tokenization), of
the parent, and of its largest process, sampled every 0.1 s with psutil (forked workers
share pages with the parent, so the sum overcounts a little); the load average. For train-bpe also the phases: its
printed pre-tokenize and merge wall times and distinct pre-tokens, and the merge's CPU seconds (the parent's CPU
time after its workers exit: the merge is serial and runs in the parent). CPU seconds are the numbers to
extrapolate from on a shared machine: wall time there depends on what else runs (docs/owt-scale.md).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


def run_measured(cmd: list[str]) -> dict:
    """Run cmd; return its stdout, wall s, tree CPU s, peak RSS (tree sum and largest process, MB), the parent's CPU
    s when its children were last seen and at its end, and the 1-minute load average before and after."""
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak = {"tree_mb": 0.0, "proc_mb": 0.0, "tree_with_children_mb": 0.0, "parent_mb": 0.0}
    peak.update(parent_cpu_children_gone=None, parent_cpu_last=0.0)
    done = threading.Event()

    def sample():
        had_children = False
        while not done.is_set():
            try:
                kids = ps.children(recursive=True)
                rss = [ps.memory_info().rss] + [k.memory_info().rss for k in kids if k.is_running()]
                cpu = ps.cpu_times()
                peak["parent_cpu_last"] = cpu.user + cpu.system
                if kids:
                    had_children = True
                elif had_children and peak["parent_cpu_children_gone"] is None:
                    peak["parent_cpu_children_gone"] = cpu.user + cpu.system
                if kids:
                    peak["tree_with_children_mb"] = max(peak["tree_with_children_mb"], sum(rss) / 2**20)
                peak["parent_mb"] = max(peak["parent_mb"], rss[0] / 2**20)
            except psutil.Error:  # a process ended while sampled: skip this sample
                rss = [0]
            peak["tree_mb"] = max(peak["tree_mb"], sum(rss) / 2**20)
            peak["proc_mb"] = max(peak["proc_mb"], max(rss) / 2**20)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out_chunks = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = "".join(out_chunks)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stdout[-3000:]}")
    return {
        "cmd": " ".join(cmd),
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "peak_tree_mb": peak["tree_mb"],
        "peak_proc_mb": peak["proc_mb"],
        "peak_tree_with_children_mb": peak["tree_with_children_mb"],
        "peak_parent_mb": peak["parent_mb"],
        "ru_maxrss_mb": ru.ru_maxrss / 1024,
        "parent_cpu_children_gone": peak["parent_cpu_children_gone"],
        "parent_cpu_last": peak["parent_cpu_last"],
        "load1_before": load0,
        "load1_after": os.getloadavg()[0],
        "stdout": stdout,
    }


def bpe_phases(stdout: str) -> dict:
    m = re.search(r"pre-tokenize ([\d.]+) s with (\d+) process\(es\), merge ([\d.]+) s, (\w+) engine", stdout)
    d = re.search(r"distinct pre-tokens: (\d+)", stdout)
    return {
        "pretokenize_s": float(m.group(1)),
        "merge_s": float(m.group(3)),
        "engine": m.group(4),
        "distinct_pretokens": int(d.group(1)),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", help="append one JSON line per file here")
    p.add_argument("--skip-tokenize", action="store_true")
    p.add_argument("--keep-tokenizer", help="copy the tokenizer directory of the last file here")
    args = p.parse_args(argv)
    cli = [sys.executable, "-m", "cs336_basics.cli"]
    for file in args.files:
        size = os.path.getsize(file)
        with tempfile.TemporaryDirectory(dir=Path(file).parent) as tmp:
            tok_dir = Path(tmp) / "tok"
            bpe = run_measured(
                cli + ["train-bpe", file, "--vocab-size", str(args.vocab_size), "--special-token", "<|endoftext|>"]
                + ["--out", str(tok_dir), "--workers", str(args.workers), "--no-progress"]
            )  # fmt: skip
            bpe.update(bpe_phases(bpe["stdout"]))
            gone = bpe["parent_cpu_children_gone"]
            bpe["merge_cpu_s"] = None if gone is None else bpe["parent_cpu_last"] - gone
            row = {"file": file, "bytes": size, "workers": args.workers, "train_bpe": bpe}
            print(f"{file}: {size:,} bytes; train-bpe {bpe['wall_s']:.1f} s wall, {bpe['cpu_s']:.1f} CPU s "
                  f"(pre-tokenize {bpe['pretokenize_s']:.1f} s, merge {bpe['merge_s']:.1f} s wall / "
                  f"{bpe['merge_cpu_s'] or float('nan'):.1f} CPU s), peak {bpe['peak_tree_mb']:.0f} MB tree / "
                  f"{bpe['peak_proc_mb']:.0f} MB process, {bpe['distinct_pretokens']:,} distinct pre-tokens, "
                  f"load {bpe['load1_before']:.1f}", flush=True)  # fmt: skip
            if not args.skip_tokenize:
                out = Path(tmp) / "ids.bin"
                tk = run_measured(
                    cli + ["tokenize", file, "--tokenizer", str(tok_dir), "--out", str(out)]
                    + ["--workers", str(args.workers), "--no-progress"]
                )  # fmt: skip
                tk["num_tokens"] = json.loads(Path(str(out) + ".json").read_text())["num_tokens"]
                row["tokenize"] = tk
                print(f"  tokenize {tk['wall_s']:.1f} s wall, {tk['cpu_s']:.1f} CPU s, peak {tk['peak_tree_mb']:.0f} "
                      f"MB tree / {tk['peak_proc_mb']:.0f} MB process, {tk['num_tokens']:,} tokens, "
                      f"load {tk['load1_before']:.1f}", flush=True)  # fmt: skip
            if args.keep_tokenizer:
                shutil.rmtree(args.keep_tokenizer, ignore_errors=True)
                shutil.copytree(tok_dir, args.keep_tokenizer)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
