"""A run directory's files besides checkpoints, all written atomically (or appended line by line):

config.json   the full training config, model config, git SHA, command line, versions, schedule
log.jsonl     one JSON record per logged step (step, tokens, lr, train_loss, grad_norm, tokens_per_s, mfu,
              wall_clock_s; val_loss at evaluation steps)
summary.json  what `train` returns
loss.png      train and validation loss against steps and wall-clock
"""

import json
import os
from pathlib import Path

from cs336_basics.fileio import atomic_write_bytes


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a log.jsonl ([] when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_log(path: str | os.PathLike, records: list[dict]) -> None:
    atomic_write_bytes(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()))


def append_log(path: str | os.PathLike, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def plot_losses(records: list[dict], path: str | os.PathLike) -> None:
    """loss.png: train and val loss against steps (left) and against wall-clock minutes (right); atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_loss" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in ((axes[0], "step", "step"), (axes[1], "wall_clock_s", "wall-clock (minutes)")):
        scale = 60.0 if key == "wall_clock_s" else 1.0
        if train:
            ax.plot([r[key] / scale for r in train], [r["train_loss"] for r in train], label="train", lw=1)
        if val:
            ax.plot([r[key] / scale for r in val], [r["val_loss"] for r in val], "o-", label="val", ms=3)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy loss (nats/token)")
    axes[0].legend()
    fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)
