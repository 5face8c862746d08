"""The trainer's settings: the `TrainConfig` dataclass, its validation, TOML files, and how settings combine.

Every field is one `train` flag (the name in kebab case); its help text is the field's `metadata["help"]` and its
default the field's default, so `cs336_basics.commands.train` builds the parser from this file alone. Settings
combine, later ones winning (`resolve_settings`):

    TrainConfig defaults < the run's config.json (with resume) < the --init-from checkpoint's model settings
    < a --config TOML file < flags given on the command line
"""

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from cs336_basics.config import (
    MUON_LR_ADJUSTMENTS,
    AttentionBackend,
    FeedForwardKind,
    KernelKind,
    ModelConfig,
    NormPlacement,
    PositionKind,
    check_int,
    model_setting,
)

DType = Literal["auto", "float32", "bfloat16"]
SCHEDULES = ("cosine", "wsd")
OPTIMIZERS = ("adamw", "muon")


def _setting(default, help: str, group: str, **extra) -> Any:
    """A TrainConfig field: its default (MISSING: required), the flag's help text and argparse group, and optional
    flag details: `choices` (the allowed values), `unset` (what a None default means), `flag` (the flag's spelling),
    `aliases` (older spellings), `metavar`."""
    metadata = {"help": help, "group": group, **extra}
    return field(metadata=metadata) if default is MISSING else field(default=default, metadata=metadata)


@dataclass(kw_only=True)
class TrainConfig:
    """Every setting of a training run; the `train` flags are these names in kebab case."""

    train: str = _setting(MISSING, "training token file (flat uint16/uint32 ids with a FILE.json sidecar)", "data")
    val: str = _setting(MISSING, "validation token file (same format)", "data")
    out: str = _setting(MISSING, "run directory (created; holds config.json, log.jsonl, checkpoints)", "data")
    resume: bool = _setting(
        False, "continue from the newest checkpoint in --out (settings default to its run's)", "data"
    )
    init_from: str | None = _setting(
        None,
        "start a new run (step 0, fresh optimizer) from the weights of this checkpoint, or of the newest one in this "
        "run directory; the model settings default to the checkpoint's and must match it",
        "data",
        metavar="CHECKPOINT_OR_RUN_DIR",
    )
    # model: ModelConfig's fields, with their help, choices and defaults (the handout's TinyStories model)
    vocab_size: int = model_setting("vocab_size")
    context_length: int = model_setting("context_length")
    d_model: int = model_setting("d_model")
    d_ff: int | None = model_setting("d_ff")
    num_layers: int = model_setting("num_layers")
    num_heads: int = model_setting("num_heads")
    rope_theta: float = model_setting("rope_theta")
    norm: NormPlacement = model_setting("norm")
    positions: PositionKind = model_setting("positions")
    ffn: FeedForwardKind = model_setting("ffn")
    tie_embeddings: bool = model_setting("tie_embeddings")
    attention_backend: AttentionBackend = model_setting("attention_backend")
    norm_eps: float = model_setting("norm_eps")
    kernels: KernelKind = model_setting("kernels")
    qk_norm: bool = model_setting("qk_norm")
    logit_softcap: float | None = model_setting("logit_softcap")
    zero_init_proj: bool = model_setting("zero_init_proj")
    # optimizer and schedule
    lr: float = _setting(1e-3, "peak learning rate", "optimizer")
    min_lr: float | None = _setting(None, "final learning rate of the cosine", "optimizer", unset="lr/10")
    beta1: float = _setting(0.9, "AdamW β1", "optimizer")
    beta2: float = _setting(0.95, "AdamW β2", "optimizer")
    eps: float = _setting(1e-8, "AdamW ε", "optimizer")
    weight_decay: float = _setting(0.1, "decoupled weight decay", "optimizer")
    warmup_steps: int | None = _setting(None, "linear warmup steps", "optimizer", unset="5% of the steps")
    cosine_steps: int | None = _setting(None, "step where the cosine reaches min-lr", "optimizer", unset="all steps")
    grad_clip: float = _setting(1.0, "max global gradient L2 norm (0 = off; the norm is still logged)", "optimizer")
    schedule: str = _setting(
        "cosine",
        "LR schedule: cosine (warmup, cosine to min-lr) or wsd (warmup, constant, linear decay to min-lr over the "
        "last --decay-frac of the steps)",
        "optimizer",
        choices=SCHEDULES,
    )
    decay_frac: float = _setting(0.2, "wsd: the fraction of the steps spent decaying", "optimizer")
    optimizer: str = _setting(
        "adamw",
        "adamw for every parameter, or muon for the 2-D hidden matrices (attention q/k/v/output, feed-forward) with "
        "AdamW for the rest (embeddings, LM head, gains)",
        "optimizer",
        choices=OPTIMIZERS,
    )
    muon_lr: float | None = _setting(
        None, "Muon's peak learning rate (scaled per matrix by --muon-adjust-lr)", "optimizer", unset="lr"
    )
    muon_momentum: float = _setting(0.95, "Muon's (Nesterov) momentum", "optimizer")
    muon_weight_decay: float | None = _setting(None, "Muon's decoupled weight decay", "optimizer", unset="weight-decay")
    muon_adjust_lr: str = _setting(
        "match_rms_adamw",
        "Muon's per-matrix LR scale: match_rms_adamw 0.2·sqrt(max(A, B)) (AdamW's lr carries over), original "
        "sqrt(max(1, A/B)), spectral_unclamped sqrt(A/B)",
        "optimizer",
        choices=MUON_LR_ADJUSTMENTS,
    )
    muon_ns_dtype: str = _setting(
        "auto",
        "dtype of Muon's Newton-Schulz iteration (auto = bfloat16 on CUDA, float32 on the CPU)",
        "optimizer",
        choices=get_args(DType),
    )
    # batches and length
    batch_size: int = _setting(128, "sequences per device per micro-step", "length")
    grad_accum_steps: int = _setting(1, "micro-steps per optimizer step", "length")
    steps: int | None = _setting(None, "optimizer steps", "length", unset="from --max-tokens")
    max_tokens: int | None = _setting(None, "token budget: steps = ceil(N / tokens per step)", "length", unset="off")
    max_time: str | None = _setting(
        None,
        "wall-clock budget of training, e.g. 90m, 30s, 1.5h: when spent, stop with a final evaluation and "
        "checkpoint; counts training across resumes, not evaluation or checkpointing",
        "length",
        unset="off",
    )
    # run
    seed: int = _setting(0, "seed for init and batch sampling", "run")
    device: str = _setting("auto", "auto (cuda, mps, cpu), cpu, cuda[:N] or mps", "run")
    dtype: DType = _setting("auto", "bfloat16 = autocast, weights stay float32; auto = bfloat16 on CUDA", "run")
    compile: bool = _setting(False, "torch.compile the model", "run")
    deterministic: bool = _setting(
        False, "deterministic CUDA kernels, for bitwise-reproducible GPU runs (slower); CPU runs always are", "run"
    )
    eval_interval: int = _setting(500, "validate every N steps (0 = only at the end)", "run")
    eval_batches: int = _setting(20, "fixed validation batches per evaluation", "run")
    log_interval: int = _setting(10, "log the train loss every N steps", "run")
    checkpoint_interval: int = _setting(1000, "checkpoint every N steps (0 = only at the end)", "run")
    keep_checkpoints: int = _setting(3, "keep the newest K checkpoints (0 = all)", "run")
    stop_at_step: int | None = _setting(
        None, "stop after this step with a checkpoint, as if preempted (resume later)", "run", unset="off"
    )
    wandb: bool = _setting(False, "log to Weights & Biases (WANDB_MODE=offline works without an account)", "run")
    wandb_project: str = _setting("cs336-basics", "W&B project", "run")
    wandb_run_name: str | None = _setting(None, "W&B run name", "run", unset="W&B's")
    progress: bool = _setting(True, "no progress bar", "run", flag="--no-progress")
    plot: bool = _setting(
        True, "do not draw loss.png (refreshed at every evaluation and checkpoint)", "run", flag="--no-plot"
    )

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_settings(dataclasses.asdict(self))

    def tokens_per_step(self, world_size: int = 1) -> int:
        return self.batch_size * self.grad_accum_steps * world_size * self.context_length

    def total_steps(self, world_size: int = 1) -> int:
        if self.steps is not None:
            return self.steps
        return math.ceil(self.max_tokens / self.tokens_per_step(world_size))

    def lr_schedule(self, world_size: int = 1) -> dict[str, float | int]:
        """Keyword arguments of get_lr_cosine_schedule (schedule cosine) or get_lr_wsd_schedule (wsd) for the
        AdamW learning rate; the LR of step s (1-based) is its value at it=s."""
        steps = self.total_steps(world_size)
        warmup = self.warmup_steps if self.warmup_steps is not None else round(0.05 * steps)
        peak, floor = self.adamw_peaks()
        peaks = dict(max_learning_rate=peak, min_learning_rate=floor, warmup_iters=warmup)
        if self.schedule == "wsd":
            return peaks | dict(total_iters=steps, decay_frac=self.decay_frac)
        cosine = self.cosine_steps if self.cosine_steps is not None else steps
        return peaks | dict(cosine_cycle_iters=max(cosine, warmup))

    def adamw_peaks(self) -> tuple[float, float]:
        """AdamW's (peak, final) learning rate: --lr, and --min-lr (default lr/10)."""
        return self.lr, self.min_lr if self.min_lr is not None else self.lr / 10

    def muon_peaks(self) -> tuple[float, float]:
        """Muon's (peak, final) learning rate: --muon-lr (default --lr), and the same fraction of it as min-lr
        is of lr."""
        peak = self.muon_lr if self.muon_lr is not None else self.lr
        floor = self.adamw_peaks()[1]
        return peak, (peak * floor / self.lr if self.lr > 0 else 0.0)

    def max_time_seconds(self) -> float | None:
        return None if self.max_time is None else parse_duration(self.max_time, "max_time")


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError/FileNotFoundError for any bad setting or input file, before any work starts."""
    from cs336_basics.checkpoints import resolve_checkpoint  # (torch: the settings alone do not need it)
    from cs336_basics.data import check_token_file
    from cs336_basics.runtime import resolve_device

    model_config = config.model_config()  # checks the model dims
    for name in ("batch_size", "grad_accum_steps", "eval_batches", "log_interval"):
        check_int(name, getattr(config, name), 1)
    for name in ("eval_interval", "checkpoint_interval", "keep_checkpoints"):
        check_int(name, getattr(config, name), 0)
    if (config.steps is None) == (config.max_tokens is None):
        raise ValueError(
            f"give exactly one of steps={config.steps} and max_tokens={config.max_tokens} (--steps or --max-tokens)"
        )
    for name in ("steps", "max_tokens", "stop_at_step"):
        if getattr(config, name) is not None:
            check_int(name, getattr(config, name), 1)
    for name in ("warmup_steps", "cosine_steps"):
        if getattr(config, name) is not None:
            check_int(name, getattr(config, name), 0)
    if not config.lr >= 0 or (config.min_lr is not None and not config.min_lr >= 0):
        raise ValueError(f"lr={config.lr} and min_lr={config.min_lr} must be >= 0")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(config, name) < 1:
            raise ValueError(f"{name}={getattr(config, name)} must be in [0, 1)")
    for name in ("eps", "weight_decay", "grad_clip"):
        if not getattr(config, name) >= 0:
            raise ValueError(f"{name}={getattr(config, name)} must be >= 0")
    for name, allowed in (
        ("dtype", get_args(DType)),
        ("schedule", SCHEDULES),
        ("optimizer", OPTIMIZERS),
        ("muon_adjust_lr", MUON_LR_ADJUSTMENTS),
        ("muon_ns_dtype", get_args(DType)),
    ):
        if getattr(config, name) not in allowed:
            raise ValueError(f"{name}={getattr(config, name)!r} must be one of {allowed}")
    if config.muon_lr is not None and not config.muon_lr >= 0:
        raise ValueError(f"muon_lr={config.muon_lr} must be >= 0")
    if config.muon_weight_decay is not None and not config.muon_weight_decay >= 0:
        raise ValueError(f"muon_weight_decay={config.muon_weight_decay} must be >= 0")
    if not 0 <= config.muon_momentum < 1:
        raise ValueError(f"muon_momentum={config.muon_momentum} must be in [0, 1)")
    if not 0 <= config.decay_frac <= 1:
        raise ValueError(f"decay_frac={config.decay_frac} must be in [0, 1]")
    if config.schedule == "wsd":
        steps, warmup = config.total_steps(), config.lr_schedule()["warmup_iters"]
        if warmup + config.decay_frac * steps > steps:
            raise ValueError(
                f"schedule='wsd': warmup_steps={warmup} plus the decay (decay_frac={config.decay_frac} of {steps} "
                "steps) must fit in the run's steps"
            )
    config.max_time_seconds()  # checks its spelling
    resolve_device(config.device)
    if config.init_from is not None:
        resolve_checkpoint(config.init_from, what="init_from")
    if config.wandb:
        import_wandb()
    for name in ("train", "val"):
        check_token_file(getattr(config, name), model_config.vocab_size, model_config.context_length, what=name)


_TIME_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in a duration such as "90m", "30s", "1.5h" (a positive number and a unit s, m or h)."""
    rule = 'a duration: a positive number and a unit s, m or h, such as "90m", "30s" or "1.5h"'
    if not isinstance(text, str):
        raise ValueError(f"{what}={text!r} must be {rule} (a string)")
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        seconds = float(number) * _TIME_UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(f"{what}={text!r} must be {rule}") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{what}={text!r} must be {rule}")
    return seconds


def import_wandb():
    """The wandb module, or ValueError saying how to install it."""
    try:
        import wandb
    except ImportError as e:
        raise ValueError(
            "wandb=True (--wandb) needs the wandb package: `uv add wandb` (or `pip install wandb`); "
            "set WANDB_MODE=offline to log without an account"
        ) from e
    return wandb


def load_config_file(path: str | os.PathLike) -> dict:
    """A TOML file of TrainConfig fields (snake_case or kebab-case keys), checked against the known names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELD_NAMES:
            raise ValueError(f"config file {path}: unknown key {key!r}; known keys are the train flags, e.g. d_model")
        values[name] = value
    return values


def resolve_settings(given: dict[str, Any], config_file: str | os.PathLike | None = None) -> TrainConfig:
    """The TrainConfig of `given` (TrainConfig field -> value, e.g. the flags typed on a command line) on top of
    the defaults, the run's config.json when resuming, the --init-from checkpoint's model settings and
    `config_file`, in the order of the module docstring."""
    from cs336_basics.checkpoints import model_config_of  # (torch: the settings alone do not need it)

    values: dict[str, Any] = {}
    out = given.get("out")
    if given.get("resume") and out and (Path(out) / "config.json").is_file():
        saved = json.loads((Path(out) / "config.json").read_text())["train_config"]
        skip = ("resume", "stop_at_step", "progress")
        values.update({k: v for k, v in saved.items() if k in FIELD_NAMES and k not in skip})
    if given.get("init_from") and not values:  # a new run: the model settings default to the checkpoint's
        model = model_config_of(given["init_from"], what="--init-from").to_dict()
        values.update({k: v for k, v in model.items() if k in FIELD_NAMES})
    if config_file is not None:
        values.update(load_config_file(config_file))
    values.update(given)
    for name in ("train", "val", "out"):
        if name not in values:
            raise ValueError(f"--{name} is required (or set it in --config)")
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"unknown training settings {unknown}; the known ones are TrainConfig's fields")
    return TrainConfig(**values)
