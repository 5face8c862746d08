"""A probe run's settings, `ProbeConfig` (no torch import: `cs336-basics probe --help` builds its flags from here).

Each field with help text is a `probe` flag (kebab case; `commands/_flags.py`); the model's fields take their help
and choices from `ModelConfig` (config.py), with the probe's own small defaults.
"""

from dataclasses import asdict, dataclass, field
from typing import Any

from cs336_basics.config import FeedForwardKind, NormPlacement, PositionKind, check_int, model_setting

TASKS: tuple[str, ...] = ("reversal", "inversion", "copy", "sort", "shift", "add")
# The CLI's defaults for `add`: decimal, 5-digit operands (X has 2L symbols, so L=9 would mean an 18-symbol prompt).
ADD_DEFAULTS = {"length": 5, "vocab": 10}


def _setting(default, help: str | None = None, **extra) -> Any:
    return field(default=default, metadata={"help": help, "group": "probe", **extra} if help else {})


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """Everything one probe run needs. Defaults: reversal at L=9, V=8, solved exactly in well under a minute."""

    task: str = _setting("reversal")
    length: int = _setting(9)  # (task-dependent defaults: the `probe` command's --length and --vocab)
    vocab: int = _setting(8)  # small on purpose: repeated symbols defeat content matching, so positions must be learned
    shift: int = _setting(1, "k for the shift task, in [1, L-1]")
    train_size: int = _setting(4000, "training sequences")
    val_size: int = _setting(500, "validation sequences for early stopping, 0 = none")
    test_size: int = _setting(1000, "held-out test sequences")
    steps: int = _setting(1500, "maximum optimizer steps (the cosine schedule spans them; training may stop early)")
    batch_size: int = _setting(64, "sequences per step")
    lr: float = _setting(3e-3, "peak learning rate of the cosine schedule")
    min_lr_ratio: float = _setting(0.1, "final lr as a fraction of --lr")
    warmup_steps: int = _setting(50, "linear warmup steps")
    weight_decay: float = _setting(0.01, "AdamW weight decay")
    grad_clip: float = _setting(1.0, "max global gradient L2 norm")
    eval_every: int = _setting(50, "steps between early-stop checks on train+val, 0 = never stop early")
    stop_after: int = _setting(
        3, "consecutive early-stop checks with train and val exact (teacher forced) before stopping"
    )
    seed: int = _setting(0, "seed for data, init and batches")
    device: str = _setting("cpu", "torch device")
    context_length: int | None = _setting(
        None, "model context in tokens", unset="exactly what the task needs, 2L+1 or 3L+2 for add"
    )
    # the model: small, because the tasks need routing, not capacity; a short RoPE period separates nearby positions
    d_model: int = model_setting("d_model", 64)
    num_layers: int = model_setting("num_layers", 2)
    num_heads: int = model_setting("num_heads", 4)
    d_ff: int | None = model_setting("d_ff", 64)
    rope_theta: float = model_setting("rope_theta", 100.0)
    norm: NormPlacement = model_setting("norm")
    positions: PositionKind = model_setting("positions")
    ffn: FeedForwardKind = model_setting("ffn")
    tie_embeddings: bool = model_setting("tie_embeddings")

    def to_dict(self) -> dict:
        return asdict(self)


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not a probe task; choose one of {', '.join(TASKS)}")


def check_config(config: ProbeConfig) -> None:
    """Raise ValueError naming the first bad setting (the model's own are checked when it is built)."""
    check_task(config.task)
    check_int("steps", config.steps, 1)
    check_int("batch_size", config.batch_size, 1)
    check_int("eval_every", config.eval_every, 0)
    check_int("stop_after", config.stop_after, 1)
    check_int("warmup_steps", config.warmup_steps, 0)
    if not (config.lr > 0 and config.lr < float("inf")):
        raise ValueError(f"lr={config.lr} must be a positive finite number")
    if not 0 <= config.min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio={config.min_lr_ratio} must be in [0, 1]")
    if not config.grad_clip > 0:
        raise ValueError(f"grad_clip={config.grad_clip} must be > 0")
    if config.context_length is not None:
        check_int("context_length", config.context_length, 1)
    from cs336_basics.runtime import resolve_device  # (torch)

    resolve_device(config.device)
