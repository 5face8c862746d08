"""The modern recipe against the handout's, loss per token and tokens/s, on this machine (docs/recipe.md).

    uv run python benchmarks/recipe.py split ../shared/data/english_mix_bench.txt --out /tmp/mix   # by document
    uv run cs336-basics prepare /tmp/mix/train.txt --valid /tmp/mix/valid.txt --out /tmp/mix10k --vocab-size 10000
    uv run python benchmarks/recipe.py throughput --data /tmp/mix10k --out /tmp/recipe   # tokens/s, interleaved
    uv run python benchmarks/recipe.py runs --data /tmp/mix10k --out /tmp/recipe         # the sweeps (restartable)
    uv run python benchmarks/recipe.py report --out /tmp/recipe --docs docs               # figure, table, ratios

The data: `cs336-basics prepare` of ../shared/data/english_mix_bench.txt at vocab 10k (docs/recipe.md has the
commands). The runs, each a `cs336-basics sweep` of benchmarks/recipe/baseline.toml (every command is printed):
1. the baseline (AdamW + cosine) over the LR grid;
2. each switch alone added to the baseline at its best LR: optimizer=muon, qk_norm, ffn=relu2, logit_softcap=15,
   zero_init_proj, schedule=wsd;
3. the full recipe (the switches whose final validation loss beat the baseline's) over the same LR grid.
Then `cs336-basics compare` of the baseline, the switches and the full recipe, and the ratio of the tokens the
full recipe needs to reach the tuned baseline's final validation loss (linear interpolation between evaluations).
Tokens/s: each variant's trainer step timed in rounds that interleave the variants in one process, as tokens per
CPU-second of one torch thread (the machine is shared by other jobs: wall-clock rates swing by 3x between
samples, CPU time far less, and only ratios measured side by side mean anything); the median round per variant.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from cs336_basics.fileio import atomic_write_json
from cs336_basics.workflows.sweep import point_name

HERE = Path(__file__).resolve().parent
BASE = HERE / "recipe" / "baseline.toml"
LR_GRID = (3e-3, 1e-2, 3e-2, 1e-1)
SWITCHES = {  # name -> the settings it changes from the baseline
    "muon": {"optimizer": "muon"},
    "qk_norm": {"qk_norm": True},
    "relu2": {"ffn": "relu2"},
    "softcap": {"logit_softcap": 15.0},
    "zero_init": {"zero_init_proj": True},
    "wsd": {"schedule": "wsd"},
}


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "cs336_basics.cli", *args]
    print("$ cs336-basics " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]


def final_val(run_dir: Path) -> float:
    return json.loads((run_dir / "summary.json").read_text())["val_loss"]


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """The first token count where the validation curve reaches `target` (linear between evaluations)."""
    prev = (0, float("inf"))
    for tokens, loss in curve:
        if loss <= target:
            if prev[1] == float("inf"):
                return float(tokens)
            return prev[0] + (prev[1] - target) / (prev[1] - loss) * (tokens - prev[0])
        prev = (tokens, loss)
    return None


def fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else repr(value)


def lr_dir(sweep_dir: Path, lr: float) -> Path:
    return sweep_dir / point_name((("lr", lr),))


def switch_dir(out: Path, settings: dict) -> Path:
    return out / "switches" / point_name(tuple(settings.items()))


def best_lr(sweep_dir: Path, lrs=LR_GRID) -> float:
    losses = {lr: final_val(lr_dir(sweep_dir, lr)) for lr in lrs}
    return min(losses, key=losses.get)


def runs(data: Path, out: Path, base: Path = BASE, lrs=LR_GRID, switches_run=tuple(SWITCHES)) -> None:
    data_flags = ["--set", f"train={data / 'train.bin'}", "--set", f"val={data / 'valid.bin'}"]
    grid = ["--grid", "lr=" + ",".join(fmt(lr) for lr in lrs)]
    cli("sweep", "--config", str(base), *data_flags, *grid, "--out", str(out / "baseline"))
    lr = best_lr(out / "baseline", lrs)
    tried = {name: SWITCHES[name] for name in switches_run}
    ablations = [f"{k}={fmt(v)}" for settings in tried.values() for k, v in settings.items()]
    switches = out / "switches"
    if not (switches / "base").exists():  # the base of the ablations is the tuned baseline run itself
        switches.mkdir(parents=True, exist_ok=True)
        shutil.copytree(lr_dir(out / "baseline", lr), switches / "base")
    cli("sweep", "--config", str(base), *data_flags, "--set", f"lr={fmt(lr)}", "--ablations", *ablations,
        "--out", str(switches))  # fmt: skip
    baseline_loss = final_val(switches / "base")
    chosen = {}
    for settings in tried.values():
        if final_val(switch_dir(out, settings)) < baseline_loss:
            chosen |= settings
    atomic_write_json(
        out / "chosen.json",
        {
            "baseline_lr": lr,
            "baseline_val_loss": baseline_loss,
            "chosen": chosen,
            "lr_grid": lrs,
            "switches": list(tried),
        },
    )
    sets = [a for k, v in chosen.items() for a in ("--set", f"{k}={fmt(v)}")]
    cli("sweep", "--config", str(base), *data_flags, *sets, *grid, "--out", str(out / "modern"))


def report(out: Path, docs: Path) -> None:
    chosen = json.loads((out / "chosen.json").read_text())
    lrs, tried = chosen.get("lr_grid", LR_GRID), chosen.get("switches", list(SWITCHES))
    base_dir = out / "switches" / "base"
    modern_lr = best_lr(out / "modern", lrs)
    modern_dir = lr_dir(out / "modern", modern_lr)
    target = final_val(base_dir)
    budget = val_curve(base_dir)[-1][0]
    rows = [("baseline", base_dir)]
    for name in tried:
        rows.append((f"+{name}", switch_dir(out, SWITCHES[name])))
    rows.append(("modern (full recipe)", modern_dir))
    figure_runs = out / "figure"
    shutil.rmtree(figure_runs, ignore_errors=True)
    figure_runs.mkdir()
    for label, run_dir in rows:  # compare names a curve by its directory
        shutil.copytree(run_dir, figure_runs / label.replace(" ", "_").replace("(", "").replace(")", ""))
    cli("compare", *sorted(str(p) for p in figure_runs.iterdir()), "--x", "tokens", "--out", str(out / "report"))
    throughput = json.loads((out / "throughput.json").read_text()) if (out / "throughput.json").is_file() else {}
    table = []
    for label, run_dir in rows:
        reach = tokens_to_reach(val_curve(run_dir), target)
        key = label.split()[0].lstrip("+")
        tps = throughput.get("ratios", {}).get(key)
        table.append(
            {
                "run": label,
                "final_val_loss": final_val(run_dir),
                "tokens_to_baseline_loss": reach,
                "token_ratio": reach / budget if reach is not None else None,
                "tokens_per_s_ratio": tps,
            }
        )
    result = {
        "baseline_lr": chosen["baseline_lr"],
        "modern_lr": modern_lr,
        "modern_settings": chosen["chosen"],
        "baseline_final_val_loss": target,
        "token_budget": budget,
        "lr_grid": {
            which: {fmt(lr): final_val(lr_dir(out / which, lr)) for lr in lrs} for which in ("baseline", "modern")
        },
        "table": table,
        "throughput": throughput,
    }
    atomic_write_json(out / "recipe.json", result)
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "report" / "loss.png", docs / "recipe_loss.png")
    print(json.dumps(result, indent=2))


def variants(chosen: dict | None) -> dict[str, dict]:
    out = {"baseline": {}} | {name: settings for name, settings in SWITCHES.items()}
    out["modern"] = chosen if chosen is not None else {k: v for s in SWITCHES.values() for k, v in s.items()}
    return out


def throughput(data: Path, out: Path, rounds: int, seconds: float, base_config: Path = BASE) -> None:
    import time
    import tomllib

    import torch

    from cs336_basics.train_config import TrainConfig
    from cs336_basics.workflows.throughput import measure_throughput

    base = tomllib.loads(base_config.read_text())
    base |= dict(train=str(data / "train.bin"), val=str(data / "valid.bin"), out=str(out / "unused"), d_ff=None)
    chosen_file = out / "chosen.json"
    chosen = json.loads(chosen_file.read_text())["chosen"] if chosen_file.is_file() else None
    configs = {name: TrainConfig(**(base | settings)) for name, settings in variants(chosen).items()}
    samples: dict[str, list[float]] = {name: [] for name in configs}
    # Tokens per CPU-second of one torch thread: other jobs sharing the CPU slow wall-clock time, not this (much).
    torch.set_num_threads(1)
    for r in range(rounds):  # interleaved: every variant once per round, so load changes hit all alike
        for name, config in configs.items():
            result = measure_throughput(config, warmup_steps=2, seconds=seconds, clock=time.process_time)
            samples[name].append(result["tokens_per_s"])
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {s[-1]:.0f}" for n, s in samples.items()), flush=True)
    medians = {name: statistics.median(s) for name, s in samples.items()}
    result = {
        "tokens_per_s": medians,
        "ratios": {name: m / medians["baseline"] for name, m in medians.items()},
        "samples": samples,
        "rounds": rounds,
        "cpu_seconds_per_sample": seconds,
        "clock": "time.process_time, torch.set_num_threads(1)",
        "modern_settings": variants(chosen)["modern"],
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "throughput.json", result)
    print(json.dumps(result["ratios"], indent=2))


def split(corpus: Path, out: Path, every: int = 50) -> None:
    """Every `every`-th document of `corpus` (documents end at <|endoftext|> lines) to out/valid.txt, the rest to
    out/train.txt: a validation set drawn from every part of the corpus, not its last source."""
    marker = "<|endoftext|>\n"
    docs = [d for d in corpus.read_text(encoding="utf-8").split(marker) if d.strip()]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.txt", "w", encoding="utf-8") as train, open(out / "valid.txt", "w", encoding="utf-8") as val:
        for i, doc in enumerate(docs):
            (val if i % every == every - 1 else train).write(doc + marker)
    print(f"{len(docs)} documents: {len(docs) // every} to {out / 'valid.txt'}, the rest to {out / 'train.txt'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("split", "runs", "throughput", "report"))
    parser.add_argument("corpus", type=Path, nargs="?", help="split: the text file to split by document")
    parser.add_argument("--data", type=Path, default=Path("/tmp/mix10k"), help="prepare's output directory")
    parser.add_argument("--out", type=Path, default=Path("/tmp/recipe"), help="sweeps and results")
    parser.add_argument("--docs", type=Path, default=HERE.parent / "docs", help="where the figure is copied")
    parser.add_argument("--base", type=Path, default=BASE, help="runs, throughput: the baseline's TOML config")
    parser.add_argument("--lrs", default=",".join(fmt(lr) for lr in LR_GRID), help="runs: the LR grid, comma-separated")
    parser.add_argument(
        "--switches", default=",".join(SWITCHES), help=f"runs: the switches tried ({', '.join(SWITCHES)})"
    )
    parser.add_argument("--rounds", type=int, default=4, help="throughput: interleaved rounds")
    parser.add_argument("--seconds", type=float, default=3.0, help="throughput: CPU seconds per variant and round")
    args = parser.parse_args()
    if args.what == "split":
        split(args.corpus, args.out)
    elif args.what == "runs":
        lrs = tuple(float(lr) for lr in args.lrs.split(","))
        runs(args.data, args.out, args.base, lrs, tuple(args.switches.split(",")))
    elif args.what == "throughput":
        throughput(args.data, args.out, args.rounds, args.seconds, args.base)
    else:
        report(args.out, args.docs)


if __name__ == "__main__":
    main()
