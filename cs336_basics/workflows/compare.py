"""Compare training runs: one figure of their loss curves and one table of their results and differing settings.

    cs336-basics compare runs/a runs/b sweeps/lr --x tokens --out report/

Input: run directories as `train` writes them (`config.json` with the run's `train_config`, `log.jsonl` with one
record per logged step: step, tokens, wall_clock_s, train_loss, tokens_per_s, mfu on known GPUs, and val_loss at
evaluations) and sweep directories (`sweep.json`; each of its points' run directories counts as a run). A run's
status comes from its `sweep_status.json` when a sweep wrote one, else `finished` when its `summary.json` says it
ran to the end, `diverged` when its log holds a NaN/inf loss, else `incomplete`.

Output: OUT/loss.png (validation loss of every run against steps, tokens or wall-clock seconds; log-scaled y when
the losses span more than a factor of 2; a diverged run's last point marked with an x; with `show_train`, each
run's training loss dashed in the same colour), OUT/table.md and OUT/table.csv (one row per run, see
`TABLE_COLUMNS`, then the settings that differ between runs). The CSV holds the numbers as logged; the Markdown
rounds them.
"""

import csv
import io
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cs336_basics.fileio import atomic_write_bytes, atomic_write_text
from cs336_basics.run_dir import read_log
from cs336_basics.workflows.sweep import SWEEP_FILE, read_status

X_AXES = {"steps": ("step", "step"), "tokens": ("tokens", "tokens"), "time": ("wall_clock_s", "wall-clock (s)")}
TABLE_COLUMNS = (
    "run",
    "status",
    "final_val_loss",  # the last evaluation's loss
    "best_val_loss",  # the lowest evaluation loss
    "steps",  # the last logged step
    "tokens",
    "wall_clock_s",  # at the last logged step, earlier invocations of a resumed run included
    "tokens_per_s",  # median over the logged intervals (robust to the first, warm-up, interval)
    "mfu",  # median over the logged intervals; empty off known GPUs
)
# Settings that name or steer a run without changing what it learns: never listed as differences.
_NOT_SETTINGS = ("out", "resume", "progress", "plot", "stop_at_step", "wandb", "wandb_project", "wandb_run_name")


@dataclass
class RunData:
    """One run directory, read back: its name in the comparison, its settings, its log records and its status."""

    name: str
    path: Path
    settings: dict[str, Any] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    status: str = "incomplete"


def _is_run_dir(path: Path) -> bool:
    return (path / "log.jsonl").is_file()


def _expand(path: Path) -> list[Path]:
    """A run directory -> [it]; a sweep directory -> its points' run directories; else its run subdirectories."""
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
    if _is_run_dir(path):
        return [path]
    sweep_file = path / SWEEP_FILE
    if sweep_file.is_file():
        names = [p["name"] for p in json.loads(sweep_file.read_text()).get("points", [])]
        return [path / n for n in names if _is_run_dir(path / n)]
    runs = sorted(p for p in path.iterdir() if p.is_dir() and _is_run_dir(p))
    if not runs:
        raise ValueError(f"{str(path)!r} holds no log.jsonl and no run directories; give run or sweep directories")
    return runs


def read_run(path: str | os.PathLike, name: str | None = None) -> RunData:
    """The settings, log records and status of one run directory."""
    path = Path(path)
    records = read_log(path / "log.jsonl")
    config_path = path / "config.json"
    settings = json.loads(config_path.read_text()).get("train_config", {}) if config_path.is_file() else {}
    status = "incomplete"
    summary = path / "summary.json"
    if (recorded := read_status(path)) is not None:
        status = recorded["status"]
    elif any(not math.isfinite(r.get(k, 0.0)) for r in records for k in ("train_loss", "val_loss")):
        status = "diverged"
    elif summary.is_file() and not json.loads(summary.read_text()).get("stopped_early"):
        status = "finished"
    return RunData(name or path.name, path, settings, records, status)


def collect_runs(paths: list[str | os.PathLike]) -> list[RunData]:
    """Every run under `paths` (run or sweep directories), named by directory; clashing names get their parent's."""
    found = [run for p in paths for run in _expand(Path(p))]
    if not found:
        raise ValueError(f"no runs with a log.jsonl under {[str(p) for p in paths]}")
    names = [p.name for p in found]
    runs = []
    for path in dict.fromkeys(found):
        name = path.name if names.count(path.name) == 1 else f"{path.parent.name}/{path.name}"
        runs.append(read_run(path, name))
    return runs


def differing_settings(runs: list[RunData]) -> list[str]:
    """The train settings whose values are not the same in every run, in config order."""
    keys = list(dict.fromkeys(k for run in runs for k in run.settings if k not in _NOT_SETTINGS))
    return [k for k in keys if len({json.dumps(run.settings.get(k)) for run in runs}) > 1]


def _median(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.median(values) if values else None


def summarize(run: RunData) -> dict[str, Any]:
    """The TABLE_COLUMNS of one run, from its log records (None where the log has nothing)."""
    val = [r["val_loss"] for r in run.records if "val_loss" in r]
    finite_val = [v for v in val if math.isfinite(v)]
    last = run.records[-1] if run.records else {}
    return {
        "run": run.name,
        "status": run.status,
        "final_val_loss": val[-1] if val else None,
        "best_val_loss": min(finite_val) if finite_val else None,
        "steps": last.get("step"),
        "tokens": last.get("tokens"),
        "wall_clock_s": last.get("wall_clock_s"),
        "tokens_per_s": _median([r.get("tokens_per_s") for r in run.records]),
        "mfu": _median([r.get("mfu") for r in run.records]),
    }


def comparison_rows(runs: list[RunData]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows): TABLE_COLUMNS then the differing settings, one row per run."""
    differing = differing_settings(runs)
    rows = [summarize(run) | {k: run.settings.get(k) for k in differing} for run in runs]
    return [*TABLE_COLUMNS, *differing], rows


def _markdown_cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column == "mfu":
        return f"{value:.1%}"
    if column in ("final_val_loss", "best_val_loss"):
        return f"{value:.4f}"
    if column == "tokens_per_s":
        return f"{value:,.0f}"
    if column == "wall_clock_s":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def format_markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_markdown_cell(c, row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def format_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row[c] is None else row[c] for c in columns})
    return buffer.getvalue()


def plot_runs(runs: list[RunData], path: str | os.PathLike, x: str = "steps", show_train: bool = False) -> list[str]:
    """Draw the figure (see the module docstring) into `path` (PNG, atomic); return the labels of its run lines.

    One solid line per run: its validation loss, or its training loss when it has no evaluation (a run that
    diverged before its first one), labelled "(train)".
    """
    if x not in X_AXES:
        raise ValueError(f"x={x!r} must be one of {tuple(X_AXES)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, x_label = X_AXES[x]
    fig, ax = plt.subplots(figsize=(8, 5))
    labels, drawn = [], []
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        val = [(r[key], r["val_loss"]) for r in run.records if "val_loss" in r and key in r]
        train = [(r[key], r["train_loss"]) for r in run.records if "train_loss" in r and key in r]
        main, suffix = (val, "") if val else (train, " (train)")
        label = run.name + suffix + (" (diverged)" if run.status == "diverged" else "")
        xs, ys = [p[0] for p in main], [p[1] for p in main]
        ax.plot(xs, ys, "-", marker="o" if len(main) < 30 else None, ms=3, color=color, label=label)
        labels.append(label)
        drawn += [y for y in ys if math.isfinite(y)]
        if run.status == "diverged" and main:
            ax.plot([xs[-1]], [ys[-1] if math.isfinite(ys[-1]) else max(drawn)], "x", ms=12, mew=2, color=color)
        if show_train and val and train:
            ax.plot([p[0] for p in train], [p[1] for p in train], "--", lw=0.8, alpha=0.7, color=color)
            drawn += [p[1] for p in train if math.isfinite(p[1])]
    if drawn and min(drawn) > 0 and max(drawn) / min(drawn) > 2:
        from matplotlib.ticker import FormatStrFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 4, 5, 6 rather than 4×10⁰
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel(x_label)
    ax.set_ylabel("validation loss (nats/token)" + (", training dashed" if show_train else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
    return labels


def compare(
    paths: list[str | os.PathLike], out: str | os.PathLike, x: str = "steps", show_train: bool = False
) -> dict[str, Any]:
    """Read the runs under `paths`, write OUT/loss.png, OUT/table.md and OUT/table.csv; return what was written.

    Returns {"figure", "markdown", "csv": paths, "columns", "rows", "labels": the figure's run lines}.
    """
    if x not in X_AXES:
        raise ValueError(f"x={x!r} must be one of {tuple(X_AXES)}")
    runs = collect_runs(paths)
    columns, rows = comparison_rows(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "loss.png"
    labels = plot_runs(runs, figure, x=x, show_train=show_train)
    atomic_write_text(out / "table.md", format_markdown(columns, rows))
    atomic_write_text(out / "table.csv", format_csv(columns, rows))
    return {
        "figure": str(figure),
        "markdown": str(out / "table.md"),
        "csv": str(out / "table.csv"),
        "columns": columns,
        "rows": rows,
        "labels": labels,
    }
