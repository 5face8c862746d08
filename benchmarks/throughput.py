"""Training throughput (tokens/s, MFU) of the trainer's own step, one setting per child process with a time cap.

    PYTHONPATH=. python3 benchmarks/throughput.py                     # TinyStories config, GPU settings
    PYTHONPATH=. python3 benchmarks/throughput.py --tiny --device cpu # a seconds-long CPU check of the script

Settings (each in its own subprocess, killed after --cap-s): fp32, bf16 (autocast), bf16 + torch.compile, and
bf16 + compile + the fused SDPA attention backend. Data: random token ids (throughput does not depend on them).
Prints a table and writes JSON to $OUT/throughput.json when OUT is set (or to --json).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cs336_basics.fileio import atomic_write_json

# The expected best setting runs first, so that it is measured even if a later one eats the time budget.
SETTINGS = {
    "bf16+compile+sdpa": dict(dtype="bfloat16", compile=True, attention_backend="sdpa"),
    "bf16+compile": dict(dtype="bfloat16", compile=True, attention_backend="scratch"),
    "bf16": dict(dtype="bfloat16", compile=False, attention_backend="scratch"),
    "fp32": dict(dtype="float32", compile=False, attention_backend="scratch"),
}
TINYSTORIES = dict(
    vocab_size=10_000, context_length=256, d_model=512, d_ff=1344, num_layers=4, num_heads=16, batch_size=128
)
TINY = dict(vocab_size=256, context_length=32, d_model=64, d_ff=128, num_layers=2, num_heads=4, batch_size=8)


def _write_random_tokens(directory: Path, vocab_size: int, n: int = 2_000_000) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    paths = []
    for name in ("train", "val"):
        path = directory / f"{name}.bin"
        rng.integers(0, vocab_size, n, dtype=np.uint16).tofile(path)
        path.with_name(path.name + ".json").write_text(json.dumps({"dtype": "uint16", "num_tokens": n}))
        paths.append(str(path))
    return paths[0], paths[1]


def _child(args) -> None:
    """Measure one setting (runs in a subprocess); prints one JSON line."""
    import torch

    from cs336_basics.train_config import TrainConfig
    from cs336_basics.workflows.throughput import measure_throughput

    if args.threads:
        torch.set_num_threads(args.threads)
    model = json.loads(args.model)
    setting = SETTINGS[args.setting]
    config = TrainConfig(
        train=args.train_file,
        val=args.val_file,
        out=os.devnull,
        steps=1000,
        device=args.device,
        eval_batches=1,
        **model,
        **setting,
    )
    result = measure_throughput(config, warmup_steps=args.warmup, seconds=args.seconds)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model (CPU check of this script)")
    parser.add_argument("--device", default="auto", help="device for the trainer; default auto")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of the settings")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compile happens here); 10")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per setting; default 8")
    parser.add_argument("--cap-s", type=float, default=60.0, help="kill an eager setting after N seconds; 60")
    parser.add_argument("--compile-cap-s", type=float, default=150.0, help="the same for compiled settings; 150")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads in the child (0 = default)")
    parser.add_argument("--json", default=None, help="write the results here (default $OUT/throughput.json)")
    # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--train-file", help=argparse.SUPPRESS)
    parser.add_argument("--val-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return 0

    model = TINY if args.tiny else TINYSTORIES
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        train_file, val_file = _write_random_tokens(Path(tmp), model["vocab_size"])
        for name in names:
            cmd = [sys.executable, __file__, "--child", "--setting", name, "--model", json.dumps(model)]
            cmd += ["--train-file", train_file, "--val-file", val_file, "--device", args.device]
            cmd += ["--warmup", str(args.warmup), "--seconds", str(args.seconds), "--threads", str(args.threads)]
            t0 = time.perf_counter()
            try:
                cap = args.compile_cap_s if SETTINGS[name]["compile"] else args.cap_s
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cap)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode == 0 and lines:
                    results[name] = json.loads(lines[-1][len("RESULT ") :])
                else:
                    results[name] = {"error": (proc.stderr or proc.stdout)[-1500:]}
            except subprocess.TimeoutExpired:
                results[name] = {"error": f"timed out after {cap:.0f} s"}
            results[name]["wall_s"] = round(time.perf_counter() - t0, 1)
            print(_row(name, results[name]), flush=True)
    out = {"model": model, "results": results}
    best = max((r.get("tokens_per_s") or 0 for r in results.values()), default=0)
    out["best_tokens_per_s"] = best
    label = "tiny model" if args.tiny else "TinyStories config"
    print(f"\nbest: {best:,.0f} tokens/s ({label}; target for the TinyStories config on an H100: >= 375,000)")
    path = args.json or (Path(os.environ["OUT"]) / "throughput.json" if os.environ.get("OUT") else None)
    if path:
        atomic_write_json(path, out)
        print(f"wrote {path}")
    return 0


def _row(name: str, r: dict) -> str:
    if "error" in r:
        return f"{name:20s} FAILED ({r['wall_s']} s): {r['error'].strip().splitlines()[-1] if r['error'] else ''}"
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "n/a"
    return (
        f"{name:20s} {r['tokens_per_s']:>12,.0f} tok/s  MFU {mfu:>6s}  loss {r['loss']:.3f}  "
        f"{r['steps']} steps in {r['seconds']:.1f} s  [{r['device']}, {r['dtype']}]  wall {r['wall_s']} s"
    )


if __name__ == "__main__":
    sys.exit(main())
