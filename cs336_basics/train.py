"""The trainer: token files in, a run directory with checkpoints, logs and loss curves out; resumable to the bit.

    cs336-basics train --train data/train.bin --val data/val.bin --out runs/tiny --vocab-size 10000 \\
        --context-length 64 --d-model 64 --d-ff 192 --num-layers 2 --num-heads 4 --batch-size 16 --steps 200 \\
        --eval-interval 50 --device cpu

Run directory: `config.json` (the full training config, git SHA, command line, versions), `log.jsonl` (one JSON
record per logged step: step, tokens, lr, train_loss, grad_norm, tokens_per_s, mfu, wall_clock_s, and val_loss
at evaluation steps), `ckpt_{step:06d}.pt` (atomic; the last `keep_checkpoints` are kept) and `loss.png`.

Exact resume: a checkpoint holds the model, the optimizer, the step, the data sampler's numpy RNG state and the
torch/python RNG states; the learning rate is a pure function of the step. `--resume` restarts from the newest
checkpoint and the run continues as if it had never stopped: on the same machine the losses are bitwise equal.

Batches: each step draws `batch_size × grad_accum_steps × world_size` window starts from one seeded numpy
Generator shared (in lockstep) by every rank; rank r reads its slice. A DDP run under torchrun with batch B per
rank therefore trains on exactly the batches of a single process with batch world_size·B.

    torchrun --standalone --nproc_per_node 2 -m cs336_basics.cli train ...   # same flags; batch is per rank
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .data import _resolve_device
from .files import atomic_write_bytes
from .layers import ModelConfig, TransformerLM
from .model_info import MODEL_DEFAULTS, add_model_flags, model_config_from, peak_flops
from .model_info import training_flops_per_token as _training_flops_per_token
from .nn_utils import cross_entropy, gradient_clipping
from .optimizer import AdamW, get_lr_cosine_schedule
from .serialization import clean_state_dict, read_checkpoint, save_checkpoint

CHECKPOINT_RE = re.compile(r"^ckpt_(\d{6,})\.pt$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(kw_only=True)
class TrainConfig:
    """Every setting of a training run; the CLI flags are these names in kebab case (see `add_parser`)."""

    train: str
    val: str
    out: str
    # model (the CS336 TinyStories configuration by default)
    vocab_size: int = MODEL_DEFAULTS["vocab_size"]
    context_length: int = MODEL_DEFAULTS["context_length"]
    d_model: int = MODEL_DEFAULTS["d_model"]
    d_ff: int | None = MODEL_DEFAULTS["d_ff"]
    num_layers: int = MODEL_DEFAULTS["num_layers"]
    num_heads: int = MODEL_DEFAULTS["num_heads"]
    rope_theta: float = MODEL_DEFAULTS["rope_theta"]
    norm: str = MODEL_DEFAULTS["norm"]
    positions: str = MODEL_DEFAULTS["positions"]
    ffn: str = MODEL_DEFAULTS["ffn"]
    tie_embeddings: bool = MODEL_DEFAULTS["tie_embeddings"]
    attention_backend: str = MODEL_DEFAULTS["attention_backend"]
    # optimizer and schedule
    lr: float = 1e-3
    min_lr: float | None = None  # None: lr / 10
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int | None = None  # None: 5% of the steps
    cosine_steps: int | None = None  # None: the total number of steps
    grad_clip: float = 1.0  # 0: no clipping (the norm is still logged)
    # batches and length
    batch_size: int = 128  # sequences per rank per micro-step
    grad_accum_steps: int = 1
    steps: int | None = None
    max_tokens: int | None = None  # a token budget instead of `steps`
    # run
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # auto: bfloat16 autocast on CUDA, float32 elsewhere
    compile: bool = False
    deterministic: bool = False  # deterministic CUDA kernels (slower): bitwise-reproducible GPU runs and resumes
    eval_interval: int = 500  # 0: only the final evaluation
    eval_batches: int = 20
    log_interval: int = 10
    checkpoint_interval: int = 1000  # 0: only the final checkpoint
    keep_checkpoints: int = 3  # 0: keep all
    resume: bool = False
    init_from: str | None = None  # a checkpoint or run directory: start from its weights (step 0, fresh optimizer)
    stop_at_step: int | None = None  # stop this invocation after this step (with a checkpoint), as if preempted
    wandb: bool = False
    wandb_project: str = "cs336-basics"
    wandb_run_name: str | None = None
    progress: bool = False
    plot: bool = True  # refresh loss.png at every evaluation and checkpoint

    def model_config(self) -> ModelConfig:
        return model_config_from(dataclasses.asdict(self))

    def tokens_per_step(self, world_size: int = 1) -> int:
        return self.batch_size * self.grad_accum_steps * world_size * self.context_length

    def total_steps(self, world_size: int = 1) -> int:
        if self.steps is not None:
            return self.steps
        return math.ceil(self.max_tokens / self.tokens_per_step(world_size))

    def schedule(self, world_size: int = 1) -> dict[str, float | int]:
        """Keyword arguments of get_lr_cosine_schedule; the LR of step s (1-based) is its value at it=s."""
        steps = self.total_steps(world_size)
        warmup = self.warmup_steps if self.warmup_steps is not None else round(0.05 * steps)
        cosine = self.cosine_steps if self.cosine_steps is not None else steps
        return dict(
            max_learning_rate=self.lr,
            min_learning_rate=self.min_lr if self.min_lr is not None else self.lr / 10,
            warmup_iters=warmup,
            cosine_cycle_iters=max(cosine, warmup),
        )


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; the message names the step and the last good checkpoint."""


# --------------------------------------------------------------------------------------------------------------------
# Validation: everything that can be checked is checked before any work starts


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError/FileNotFoundError for any bad setting or input file, before any work starts."""
    model_config = config.model_config()  # checks the model dims
    positive = ("batch_size", "grad_accum_steps", "eval_batches", "log_interval")
    for name in positive:
        value = getattr(config, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    for name in ("eval_interval", "checkpoint_interval", "keep_checkpoints"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be an integer >= 0")
    if (config.steps is None) == (config.max_tokens is None):
        raise ValueError(
            f"give exactly one of steps={config.steps} and max_tokens={config.max_tokens} (--steps or --max-tokens)"
        )
    if config.steps is not None and (not isinstance(config.steps, int) or config.steps <= 0):
        raise ValueError(f"steps={config.steps!r} must be a positive integer")
    if config.max_tokens is not None and (not isinstance(config.max_tokens, int) or config.max_tokens <= 0):
        raise ValueError(f"max_tokens={config.max_tokens!r} must be a positive integer")
    if config.stop_at_step is not None and config.stop_at_step <= 0:
        raise ValueError(f"stop_at_step={config.stop_at_step} must be positive")
    if not config.lr >= 0 or (config.min_lr is not None and not config.min_lr >= 0):
        raise ValueError(f"lr={config.lr} and min_lr={config.min_lr} must be >= 0")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(config, name) < 1:
            raise ValueError(f"{name}={getattr(config, name)} must be in [0, 1)")
    if not config.eps >= 0 or not config.weight_decay >= 0 or not config.grad_clip >= 0:
        raise ValueError(
            f"eps={config.eps}, weight_decay={config.weight_decay} and grad_clip={config.grad_clip} must be >= 0"
        )
    if config.warmup_steps is not None and config.warmup_steps < 0:
        raise ValueError(f"warmup_steps={config.warmup_steps} must be >= 0")
    if config.cosine_steps is not None and config.cosine_steps < 0:
        raise ValueError(f"cosine_steps={config.cosine_steps} must be >= 0")
    if config.dtype not in ("auto", *DTYPES):
        raise ValueError(f"dtype={config.dtype!r} must be one of 'auto', 'float32', 'bfloat16'")
    resolve_device(config.device)
    if config.init_from is not None:
        resolve_checkpoint(config.init_from, what="init_from")
    if config.wandb:
        _import_wandb()
    for name in ("train", "val"):
        check_token_file(getattr(config, name), model_config.vocab_size, model_config.context_length, what=name)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; otherwise the named device, which must exist on this machine."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return _resolve_device(device)
    except RuntimeError as e:  # "cuda:3" on a one-GPU machine, "mps" off a Mac, or a malformed name
        raise ValueError(f"device={device!r}: {e}") from e


def check_token_file(path: str | os.PathLike, vocab_size: int, context_length: int, what: str = "token file") -> int:
    """Check a token file (flat uint16/uint32 ids + FILE.json sidecar) against the model; return its length.

    Raises FileNotFoundError when it or its sidecar is missing, ValueError when its size disagrees with the
    sidecar, it is shorter than one window, or an id is >= vocab_size. The id scan reads the file in chunks; it is
    skipped for uint16 files when vocab_size >= 65536, and when the sidecar records the tokenizer's `vocab_size`
    (<= vocab_size, as `tokenize` writes it) or a `max_token_id`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} token file {str(path)!r} does not exist")
    sidecar = path.with_name(path.name + ".json")
    if path.suffix != ".npy":
        if not sidecar.is_file():
            raise FileNotFoundError(
                f"{what} token file {str(path)!r} has no sidecar {sidecar.name} (written by `cs336-basics tokenize`)"
            )
        meta = json.loads(sidecar.read_text())
        if meta.get("dtype") not in ("uint16", "uint32"):
            raise ValueError(f"{sidecar}: dtype={meta.get('dtype')!r} must be 'uint16' or 'uint32'")
        itemsize = np.dtype(meta["dtype"]).itemsize
        size = path.stat().st_size
        if size % itemsize != 0 or ("num_tokens" in meta and size // itemsize != meta["num_tokens"]):
            raise ValueError(
                f"{what} token file {str(path)!r} has {size} bytes, but its sidecar says "
                f"num_tokens={meta.get('num_tokens')} of {meta['dtype']}; the file is truncated or stale"
            )
        data = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r") if size else np.zeros(0, np.uint16)
    else:
        meta = {}
        data = np.load(path, mmap_mode="r")
    if len(data) < context_length + 1:
        raise ValueError(
            f"{what} token file {str(path)!r} has {len(data)} tokens; one window of context_length="
            f"{context_length} needs {context_length + 1}"
        )
    if data.dtype == np.uint16 and vocab_size >= 2**16:
        return len(data)
    if isinstance(meta.get("vocab_size"), int) and meta["vocab_size"] <= vocab_size:
        return len(data)  # written by `tokenize` with a tokenizer whose ids all fit
    max_id = meta.get("max_token_id")
    if max_id is None:
        chunk = 1 << 24
        max_id = max(int(data[i : i + chunk].max()) for i in range(0, len(data), chunk))
    if max_id >= vocab_size:
        raise ValueError(
            f"{what} token file {str(path)!r} holds token id {max_id}, which is >= vocab_size={vocab_size}; "
            "train with the tokenizer's vocabulary size (--vocab-size)"
        )
    return len(data)


def _load_data(path: str) -> np.ndarray:
    from .data import load_tokens

    return load_tokens(path)


# --------------------------------------------------------------------------------------------------------------------
# The training loop


class _WithLoss(nn.Module):
    """model + mean cross-entropy in one module, so that torch.compile and DDP see the loss as part of the graph."""

    def __init__(self, lm: TransformerLM):
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(self.lm(x), y)


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> tuple[_Dist, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Dist(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), local_rank), device


def _read_windows(data: np.ndarray, starts: np.ndarray, context_length: int, device: torch.device):
    """(x, y) int64 (len(starts), T): windows data[s : s+T+1] split into inputs and next-token targets."""
    windows = data[starts[:, None] + np.arange(context_length + 1)].astype(np.int64)  # (B, T+1)
    batch = torch.from_numpy(windows)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    else:
        batch = batch.to(device)
    return batch[:, :-1], batch[:, 1:]


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _resolve_dtype(config: TrainConfig, device: torch.device) -> torch.dtype:
    if config.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return DTYPES[config.dtype]


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every ckpt_{step:06d}.pt in run_dir, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """A checkpoint file as given, or the newest ckpt_*.pt of a run directory; FileNotFoundError otherwise."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"{what}={str(path)!r} is a directory with no ckpt_*.pt checkpoint in it")
        return found[-1][1]
    if not path.is_file():
        raise FileNotFoundError(f"{what}={str(path)!r} is neither a checkpoint file nor a run directory")
    return path


def model_config_of(path: str | os.PathLike, what: str = "checkpoint") -> ModelConfig:
    """The ModelConfig saved in a checkpoint (file or run directory); ValueError when it has none."""
    path = resolve_checkpoint(path, what)
    saved = read_checkpoint(path).get("config")
    if saved is None:
        raise ValueError(f"{what}: checkpoint {str(path)!r} has no model config (it was not written by the trainer)")
    return ModelConfig(**saved)


# Settings that change how a model computes, not its weights: an --init-from model may differ in them.
_COMPUTE_ONLY_FIELDS = ("attention_backend",)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _import_wandb():
    try:
        import wandb
    except ImportError as e:
        raise ValueError(
            "wandb=True (--wandb) needs the wandb package: `uv add wandb` (or `pip install wandb`); "
            "set WANDB_MODE=offline to log without an account"
        ) from e
    return wandb


class _Run:
    """State of one training invocation (model, optimizer, data, RNGs); `train()` drives it."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.model_config = config.model_config()
        device = resolve_device(config.device)
        self.dist, self.device = _init_distributed(device)
        self.dtype = _resolve_dtype(config, self.device)
        self.out = Path(config.out)
        self.total_steps = config.total_steps(self.dist.world_size)
        self.schedule = config.schedule(self.dist.world_size)
        self.train_data = _load_data(config.train)
        self.val_data = _load_data(config.val)

        if config.deterministic:
            # cuBLAS needs a fixed workspace to be deterministic; the embedding backward (index_put with
            # accumulate) otherwise uses atomics on CUDA, whose order changes from run to run.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.model = TransformerLM(self.model_config, device=self.device)
        self.optimizer = AdamW(
            self.model.parameters(),
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
        self.data_rng = np.random.default_rng([config.seed, 0])
        # The validation batches are drawn once, from their own stream: the same for every evaluation and rank.
        eval_rng = np.random.default_rng([config.seed, 1])
        n_starts = len(self.val_data) - config.context_length
        global_batch = config.batch_size * self.dist.world_size
        self.eval_starts = eval_rng.integers(0, n_starts, size=(config.eval_batches, global_batch))

        step_module: nn.Module = _WithLoss(self.model)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            step_module = DistributedDataParallel(step_module, device_ids=ids)
        if config.compile:
            step_module = torch.compile(step_module)
        self.step_module = step_module
        self.eval_module = torch.compile(_WithLoss(self.model)) if config.compile else _WithLoss(self.model)

        self.step = 0
        self.tokens = 0
        self.wall_clock_before = 0.0  # seconds spent by earlier invocations of a resumed run
        self.records: list[dict] = []
        flops_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else ""
        peak = peak_flops(flops_name, "bfloat16" if self.dtype == torch.bfloat16 else "float32") if flops_name else None
        self.peak_flops = peak * self.dist.world_size if peak else None
        self.flops_per_token = _training_flops_per_token(self.model_config)

    # ---- checkpoints

    def checkpoint_path(self, step: int) -> Path:
        return self.out / f"ckpt_{step:06d}.pt"

    def save(self) -> Path | None:
        if not self.dist.main:
            return None
        rng = {
            "numpy": self.data_rng.bit_generator.state,
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        path = self.checkpoint_path(self.step)
        extra = {
            "train_config": dataclasses.asdict(self.config),
            "rng": rng,
            "tokens": self.tokens,
            "wall_clock_s": self.wall_clock(),
        }
        save_checkpoint(self.model, self.optimizer, self.step, path, config=self.model_config.to_dict(), extra=extra)
        if self.config.keep_checkpoints:
            for _, old in list_checkpoints(self.out)[: -self.config.keep_checkpoints]:
                old.unlink(missing_ok=True)
        return path

    def restore(self, path: Path) -> None:
        payload = read_checkpoint(path)
        saved = payload.get("config")
        if saved is not None and saved != self.model_config.to_dict():
            diff = {k: (saved.get(k), v) for k, v in self.model_config.to_dict().items() if saved.get(k) != v}
            raise ValueError(
                f"--resume: checkpoint {path} was trained with a different model; (checkpoint, now) = {diff}"
            )
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.step = int(payload["iteration"])
        self.tokens = int(payload.get("tokens", 0))
        self.wall_clock_before = float(payload.get("wall_clock_s", 0.0))
        rng = payload.get("rng", {})
        if "numpy" in rng:
            self.data_rng.bit_generator.state = rng["numpy"]
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "python" in rng:
            random.setstate(_as_python_random_state(rng["python"]))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def load_weights_from(self, path: Path) -> None:
        """Load the model weights of checkpoint `path` (its model config must equal ours); optimizer, step and
        RNG streams stay fresh."""
        payload = read_checkpoint(path)
        saved = payload.get("config")
        if saved is None:
            raise ValueError(f"init_from: checkpoint {str(path)!r} has no model config (not written by the trainer)")
        theirs, ours = ModelConfig(**saved).to_dict(), self.model_config.to_dict()
        diff = {k: (theirs[k], v) for k, v in ours.items() if theirs[k] != v and k not in _COMPUTE_ONLY_FIELDS}
        if diff:
            names = ", ".join(f"{k}={mine!r} (checkpoint: {ckpt!r})" for k, (ckpt, mine) in diff.items())
            raise ValueError(f"init_from={str(path)!r}: the model config differs from the checkpoint's: {names}")
        self.model.load_state_dict(clean_state_dict(payload["model"]))

    # ---- steps

    def wall_clock(self) -> float:
        return self.wall_clock_before + (time.perf_counter() - self.started)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step; returns (mean loss, grad norm) as device tensors and the learning rate."""
        config, world, rank = self.config, self.dist.world_size, self.dist.rank
        lr = get_lr_cosine_schedule(self.step + 1, **self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n_starts = len(self.train_data) - config.context_length
        starts = self.data_rng.integers(0, n_starts, size=(config.grad_accum_steps, world, config.batch_size))
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(config.grad_accum_steps):
            x, y = _read_windows(self.train_data, starts[micro, rank], config.context_length, self.device)
            sync = micro == config.grad_accum_steps - 1 or not self.dist.enabled
            with contextlib.nullcontext() if sync else self.step_module.no_sync(), _autocast(self.device, self.dtype):
                loss = self.step_module(x, y)
            (loss / config.grad_accum_steps).backward()
            loss_sum += loss.detach().float()
        grad_norm = gradient_clipping(self.model.parameters(), config.grad_clip or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += config.tokens_per_step(world)
        return loss_sum / config.grad_accum_steps, grad_norm, lr

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation batches; each rank scores its slice of every batch."""
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        mine = slice(self.dist.rank * self.config.batch_size, (self.dist.rank + 1) * self.config.batch_size)
        for starts in self.eval_starts:
            x, y = _read_windows(self.val_data, starts[mine], self.config.context_length, self.device)
            with _autocast(self.device, self.dtype):
                total += self.eval_module(x, y).double()
        total = self.all_reduce_mean(total)
        self.model.train()
        return float(total) / len(self.eval_starts)

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.dist.enabled:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.dist.world_size
        return values


def _as_python_random_state(state):
    # torch.load gives back lists where random.getstate() had tuples.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def train(config: TrainConfig) -> dict:
    """Run (or, with config.resume, continue) training; return a summary dict.

    Summary keys: run_dir, step, tokens, train_loss, val_loss (final evaluation), val_perplexity, wall_clock_s,
    tokens_per_s (training throughput of this invocation), checkpoint (the last one written), stopped_early.
    Raises NonFiniteLossError when the loss turns NaN/inf (no checkpoint is written after that point).
    """
    validate_config(config)
    out = Path(config.out)
    existing = list_checkpoints(out)
    if existing and not config.resume:
        raise FileExistsError(
            f"out={str(out)!r} already has checkpoints (newest {existing[-1][1].name}); pass --resume to continue "
            "that run or choose a new --out"
        )
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(config, existing)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


def _train(config: TrainConfig, existing: list[tuple[int, Path]]) -> dict:
    out = Path(config.out)
    run = _Run(config)
    main = run.dist.main
    log_path, plot_path = out / "log.jsonl", out / "loss.png"
    if config.resume and existing:
        run.restore(existing[-1][1])
        # Log lines written after that checkpoint (by the invocation that stopped) belong to steps that will be
        # run again: drop them, so log.jsonl reads as one uninterrupted run.
        run.records = [r for r in _read_log(log_path) if r["step"] <= run.step]
    elif config.init_from is not None:
        run.load_weights_from(resolve_checkpoint(config.init_from, what="init_from"))
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".ckpt_*.tmp"):  # left by a process killed while writing a checkpoint
            stale.unlink(missing_ok=True)
        meta = {
            "train_config": dataclasses.asdict(config),
            "model_config": run.model_config.to_dict(),
            "git_sha": _git_sha(),
            "command_line": sys.argv,
            "torch_version": torch.__version__,
            "device": str(run.device),
            "dtype": str(run.dtype).removeprefix("torch."),
            "world_size": run.dist.world_size,
            "total_steps": run.total_steps,
            "schedule": run.schedule,
            "resumed_from_step": run.step if config.resume else None,
            "init_from_checkpoint": (
                str(resolve_checkpoint(config.init_from, "init_from")) if config.init_from is not None else None
            ),
        }
        _write_json(out / "config.json", meta)
        atomic_write_bytes(log_path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in run.records).encode()))
    wandb_run = None
    if config.wandb and main:
        wandb_run = _import_wandb().init(
            project=config.wandb_project, name=config.wandb_run_name, config=dataclasses.asdict(config), resume="allow"
        )

    from tqdm import tqdm

    bar = tqdm(
        total=run.total_steps, initial=run.step, disable=not (config.progress and main), unit="step", dynamic_ncols=True
    )
    run.started = time.perf_counter()
    last_ckpt = existing[-1][1] if existing and config.resume else None
    last_ckpt_step = run.step if last_ckpt else 0
    interval_start, interval_tokens, paused = time.perf_counter(), 0, 0.0
    run_start_tokens, run_train_time = run.tokens, 0.0
    loss_acc = torch.zeros(2, device=run.device, dtype=torch.float64)  # (loss sum, grad norm sum) since last log
    steps_in_interval = 0
    first_bad = torch.zeros((), dtype=torch.long, device=run.device)  # first step whose loss was not finite
    last_train_loss = None
    stopped_early = False
    val_loss = None

    def check_finite():
        worst = first_bad.clone()
        if run.dist.enabled:
            dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        bad = int(worst.item())
        if bad:
            where = f"{last_ckpt} (step {last_ckpt_step})" if last_ckpt else "none (no checkpoint was written yet)"
            raise NonFiniteLossError(
                f"the training loss became NaN or inf at step {bad}; stopped without saving. Last good checkpoint: "
                f"{where}. Try a lower --lr, a longer --warmup-steps or --grad-clip 1.0, then --resume."
            )

    try:
        while run.step < run.total_steps:
            loss, grad_norm, lr = run.train_step()
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), run.step, first_bad)
            loss_acc += torch.stack([loss.double(), grad_norm.double()])
            steps_in_interval += 1
            interval_tokens += config.tokens_per_step(run.dist.world_size)
            step = run.step
            bar.update(1)
            is_last = step == run.total_steps
            stop_here = config.stop_at_step is not None and step >= config.stop_at_step
            do_log = step % config.log_interval == 0 or is_last or stop_here
            do_eval = (config.eval_interval and step % config.eval_interval == 0) or is_last
            do_ckpt = (config.checkpoint_interval and step % config.checkpoint_interval == 0) or is_last or stop_here
            record: dict[str, Any] = {}
            if do_log:
                means = run.all_reduce_mean(loss_acc).tolist()  # syncs with the device
                check_finite()
                now = time.perf_counter()
                elapsed = now - interval_start - paused
                run_train_time += elapsed
                tokens_per_s = interval_tokens / elapsed if elapsed > 0 else float("nan")
                last_train_loss = means[0] / steps_in_interval
                record = {
                    "step": step,
                    "tokens": run.tokens,
                    "lr": lr,
                    "train_loss": last_train_loss,
                    "grad_norm": means[1] / steps_in_interval,
                    "tokens_per_s": tokens_per_s,
                    "wall_clock_s": run.wall_clock(),
                }
                if run.peak_flops:
                    record["mfu"] = tokens_per_s * run.flops_per_token / run.peak_flops
                bar.set_postfix(loss=f"{last_train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", lr=f"{lr:.2e}")
                loss_acc.zero_()
                steps_in_interval, interval_tokens, paused = 0, 0, 0.0
                interval_start = now
            pause_start = time.perf_counter()
            if do_eval:
                check_finite()
                val_loss = run.evaluate()
                record.update(step=step, tokens=run.tokens, val_loss=val_loss, wall_clock_s=run.wall_clock())
            if record and main:
                run.records.append(record)
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if wandb_run is not None:
                    wandb_run.log(record, step=step)
            if do_ckpt:
                check_finite()
                last_ckpt, last_ckpt_step = run.save(), step
            if main and config.plot and (do_eval or do_ckpt):
                plot_losses(run.records, plot_path)
            paused += time.perf_counter() - pause_start
            if stop_here and not is_last:
                stopped_early = True
                break
    finally:
        bar.close()
        if wandb_run is not None:
            wandb_run.finish()
    summary = {
        "run_dir": str(out),
        "step": run.step,
        "total_steps": run.total_steps,
        "tokens": run.tokens,
        "train_loss": last_train_loss,
        "val_loss": val_loss,
        "val_perplexity": math.exp(val_loss) if val_loss is not None and val_loss < 700 else None,
        "wall_clock_s": run.wall_clock(),
        "tokens_per_s": (run.tokens - run_start_tokens) / run_train_time if run_train_time > 0 else None,
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "stopped_early": stopped_early,
    }
    if main:
        _write_json(out / "summary.json", summary)
    return summary


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


# --------------------------------------------------------------------------------------------------------------------
# Throughput (used by benchmarks/gpu_check.sh)


def measure_throughput(config: TrainConfig, warmup_steps: int = 5, seconds: float = 5.0) -> dict:
    """Tokens/s (and MFU on known GPUs) of the trainer's own step on `config`: warmup, then timed steps.

    Nothing is written to config.out. Returns dict(tokens_per_s, mfu, steps, seconds, loss, device, dtype).
    """
    run = _Run(config)
    run.started = time.perf_counter()
    for _ in range(warmup_steps):
        loss, _, _ = run.train_step()
    float(loss)
    _sync(run.device)
    t0, steps = time.perf_counter(), 0
    while True:
        loss, _, _ = run.train_step()
        steps += 1
        if steps % 5 == 0:
            _sync(run.device)
            if time.perf_counter() - t0 >= seconds:
                break
    _sync(run.device)
    elapsed = time.perf_counter() - t0
    tokens_per_s = steps * config.tokens_per_step(run.dist.world_size) / elapsed
    return {
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * run.flops_per_token / run.peak_flops if run.peak_flops else None,
        "steps": steps,
        "seconds": elapsed,
        "loss": float(loss),
        "device": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else str(run.device),
        "dtype": str(run.dtype).removeprefix("torch."),
        "flops_per_token": run.flops_per_token,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------------------------
# CLI


def _field_types() -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def load_config_file(path: str | os.PathLike) -> dict:
    """A TOML file of TrainConfig fields (snake_case or kebab-case keys), checked against the known names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    values = {}
    known = _field_types()
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(f"config file {path}: unknown key {key!r}; known keys are the train flags, e.g. d_model")
        values[name] = value
    return values


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a Transformer LM on token files; resumable, logs and checkpoints into a run directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    s = argparse.SUPPRESS
    io = parser.add_argument_group("data and run directory")
    io.add_argument("--train", default=s, help="training token file (flat uint16/uint32 ids with a FILE.json sidecar)")
    io.add_argument("--val", default=s, help="validation token file (same format)")
    io.add_argument("--out", default=s, help="run directory (created; holds config.json, log.jsonl, checkpoints)")
    io.add_argument("--config", default=s, help="TOML file of settings (keys = flag names); flags override it")
    io.add_argument(
        "--resume",
        action="store_true",
        default=s,
        help="continue from the newest checkpoint in --out (settings default to the run's config.json)",
    )
    io.add_argument(
        "--init-from",
        default=s,
        metavar="CHECKPOINT_OR_RUN_DIR",
        help="start a new run (step 0, fresh optimizer) from the weights of this checkpoint or of the newest one in "
        "this run directory; model settings default to the checkpoint's and must match it",
    )
    add_model_flags(parser, suppress_defaults=True)
    opt = parser.add_argument_group("optimizer and schedule")
    opt.add_argument("--lr", type=float, default=s, help="peak learning rate; default 1e-3")
    opt.add_argument("--min-lr", type=float, default=s, help="final learning rate of the cosine; default lr/10")
    opt.add_argument("--beta1", type=float, default=s, help="AdamW β1; default 0.9")
    opt.add_argument("--beta2", type=float, default=s, help="AdamW β2; default 0.95")
    opt.add_argument("--eps", type=float, default=s, help="AdamW ε; default 1e-8")
    opt.add_argument("--weight-decay", type=float, default=s, help="decoupled weight decay; default 0.1")
    opt.add_argument("--warmup-steps", type=int, default=s, help="linear warmup steps; default 5%% of the steps")
    opt.add_argument("--cosine-steps", type=int, default=s, help="step where the cosine reaches min-lr; default: all")
    opt.add_argument("--grad-clip", type=float, default=s, help="max global gradient L2 norm (0 = off); default 1.0")
    length = parser.add_argument_group("batches and length")
    length.add_argument("--batch-size", type=int, default=s, help="sequences per device per micro-step; default 128")
    length.add_argument("--grad-accum-steps", type=int, default=s, help="micro-steps per optimizer step; default 1")
    length.add_argument("--steps", type=int, default=s, help="optimizer steps (or give --max-tokens)")
    length.add_argument("--max-tokens", type=int, default=s, help="token budget: steps = ceil(N / tokens per step)")
    r = parser.add_argument_group("run")
    r.add_argument("--seed", type=int, default=s, help="seed for init and batch sampling; default 0")
    r.add_argument("--device", default=s, help="auto (cuda, mps, cpu), cpu, cuda[:N] or mps; default auto")
    r.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default=s,
        help="compute dtype: bfloat16 = autocast, weights stay float32; auto = bfloat16 on CUDA, else float32",
    )
    r.add_argument("--compile", action="store_true", default=s, help="torch.compile the model; default off")
    r.add_argument(
        "--deterministic",
        action="store_true",
        default=s,
        help="deterministic CUDA kernels, for bitwise-reproducible GPU runs (slower); CPU runs always are",
    )
    r.add_argument("--eval-interval", type=int, default=s, help="validate every N steps (0 = only at the end); 500")
    r.add_argument("--eval-batches", type=int, default=s, help="fixed validation batches per evaluation; default 20")
    r.add_argument("--log-interval", type=int, default=s, help="log train loss every N steps; default 10")
    r.add_argument(
        "--checkpoint-interval", type=int, default=s, help="checkpoint every N steps (0 = only at the end); 1000"
    )
    r.add_argument("--keep-checkpoints", type=int, default=s, help="keep the newest K checkpoints (0 = all); 3")
    r.add_argument(
        "--stop-at-step", type=int, default=s, help="stop after this step with a checkpoint (resume later); default off"
    )
    r.add_argument("--wandb", action="store_true", default=s, help="log to Weights & Biases (WANDB_MODE=offline ok)")
    r.add_argument("--wandb-project", default=s, help="W&B project; default cs336-basics")
    r.add_argument("--wandb-run-name", default=s, help="W&B run name; default W&B's")
    r.add_argument("--no-progress", action="store_true", default=s, help="no progress bar")
    r.add_argument("--no-plot", action="store_true", default=s, help="do not draw loss.png")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Settings, later ones winning: TrainConfig defaults < the run's config.json (with --resume) < --config file
    < flags given on the command line."""
    given = vars(args).copy()
    given.pop("func", None)
    given.pop("command", None)
    values: dict[str, Any] = {}
    out = given.get("out")
    if given.get("resume") and out and (Path(out) / "config.json").is_file():
        saved = json.loads((Path(out) / "config.json").read_text())["train_config"]
        values.update({k: v for k, v in saved.items() if k not in ("resume", "stop_at_step", "progress")})
    if given.get("init_from") and not values:  # not resuming: the model settings default to the checkpoint's
        values.update(model_config_of(given["init_from"], what="--init-from").to_dict())
    if "config" in given:
        values.update(load_config_file(given.pop("config")))
    values["progress"] = not given.pop("no_progress", False)
    if given.pop("no_plot", False):
        values["plot"] = False
    values.update(given)
    for name in ("train", "val", "out"):
        if name not in values:
            raise ValueError(f"--{name} is required (or set it in --config)")
    if values.get("d_ff") == 0:
        values["d_ff"] = None
    known = _field_types()
    return TrainConfig(**{k: v for k, v in values.items() if k in known})


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        summary = train(config)
    except NonFiniteLossError as e:
        print(f"cs336-basics train: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


__all__ = ["TrainConfig", "train", "validate_config", "check_token_file", "measure_throughput", "plot_losses"]
