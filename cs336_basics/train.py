"""The training loop: token files in, a run directory with checkpoints, logs and loss curves out; resumable to the bit.

    cs336-basics train --train data/train.bin --val data/val.bin --out runs/tiny --vocab-size 10000 \\
        --context-length 64 --d-model 64 --d-ff 192 --num-layers 2 --num-heads 4 --batch-size 16 --steps 200 \\
        --eval-interval 50 --device cpu

Settings: `train_config.TrainConfig`. Run directory: `config.json`, `log.jsonl`, `summary.json`, `loss.png`
(`run_files`) and `ckpt_{step:06d}.pt` (`checkpoints`; the last `keep_checkpoints` are kept).

Exact resume: a checkpoint holds the model, the optimizer, the step, the token count, the data sampler's numpy RNG
state and the torch/python RNG states; the learning rate is a pure function of the step. `resume` restarts from
the newest checkpoint and the run continues as if it had never stopped: on the same machine the losses are
bitwise equal. `init_from` instead starts a new run (step 0, fresh optimizer) from a checkpoint's weights.

Batches (`data.sample_starts` + `data.read_windows`): each step draws `batch_size × grad_accum_steps ×
world_size` window starts from one seeded numpy Generator shared (in lockstep) by every rank; rank r reads its
slice. A DDP run under torchrun with batch B per rank therefore trains on exactly the batches of a single process
with batch world_size·B.

    torchrun --standalone --nproc_per_node 2 -m cs336_basics.cli train ...   # same flags; batch is per rank
"""

import contextlib
import dataclasses
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cs336_basics import checkpoints
from cs336_basics.checkpoints import list_checkpoints
from cs336_basics.data import load_tokens, read_windows, sample_starts
from cs336_basics.fileio import atomic_write_json
from cs336_basics.model import TransformerLM
from cs336_basics.model_info import training_flops_per_token
from cs336_basics.nn_utils import cross_entropy, gradient_clipping
from cs336_basics.optimizer import AdamW, MultiOptimizer, Muon, get_lr_cosine_schedule, get_lr_wsd_schedule
from cs336_basics.run_dir import append_log, plot_losses, read_log, write_log
from cs336_basics.runtime import DTYPES, autocast, git_sha, init_distributed, peak_flops, resolve_device, resolve_dtype
from cs336_basics.serialization import clean_state_dict, read_checkpoint, save_checkpoint
from cs336_basics.train_config import TrainConfig, import_wandb, validate_config

# Settings that change how a model computes, not its weights: an init_from model may differ in them.
COMPUTE_ONLY_FIELDS = ("attention_backend", "kernels")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; the message names the step and the last good checkpoint."""


class _WithLoss(nn.Module):
    """model + mean cross-entropy in one module, so that torch.compile and DDP see the loss as part of the graph."""

    def __init__(self, lm: TransformerLM):
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(self.lm(x), y)


def _seed_everything(config: TrainConfig) -> None:
    if config.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; the embedding backward (index_put with
        # accumulate) otherwise uses atomics on CUDA, whose order changes from run to run.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(config.seed)
    random.seed(config.seed)


class Run:
    """State of one training invocation (model, optimizer, data, RNGs, counters); `train()` drives it."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.model_config = config.model_config()
        self.dist, self.device = init_distributed(resolve_device(config.device))
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.out = Path(config.out)
        self.total_steps = config.total_steps(self.dist.world_size)
        self.schedule = config.lr_schedule(self.dist.world_size)
        self.lr_at = get_lr_wsd_schedule if config.schedule == "wsd" else get_lr_cosine_schedule
        self.max_time = config.max_time_seconds()
        self.train_data = load_tokens(config.train)
        self.val_data = load_tokens(config.val)
        _seed_everything(config)
        self.model = TransformerLM(self.model_config, device=self.device)
        self.optimizer, self.group_peaks = self._make_optimizer()
        self.data_rng = np.random.default_rng([config.seed, 0])
        # The validation batches are drawn once, from their own stream: the same for every evaluation and rank.
        eval_shape = (config.eval_batches, config.batch_size * self.dist.world_size)
        eval_rng = np.random.default_rng([config.seed, 1])
        self.eval_starts = sample_starts(len(self.val_data), config.context_length, eval_shape, eval_rng)
        self.step_module, self.eval_module = self._wrap_model()
        self.step = 0
        self.tokens = 0
        self.wall_clock_before = 0.0  # seconds spent by earlier invocations of a resumed run
        self.train_time_before = 0.0  # of which training (not evaluating or checkpointing): what max_time counts
        self.paused = 0.0  # seconds of this invocation spent evaluating, checkpointing, plotting
        self.started = time.perf_counter()
        self.records: list[dict] = []  # log.jsonl's records
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else ""
        peak = peak_flops(gpu, "bfloat16" if self.dtype == torch.bfloat16 else "float32") if gpu else None
        self.peak_flops = peak * self.dist.world_size if peak else None
        self.flops_per_token = training_flops_per_token(self.model_config)

    def _make_optimizer(self) -> tuple[AdamW | MultiOptimizer, list[tuple[float, float]]]:
        """AdamW for every parameter, or (optimizer="muon") Muon for the blocks' 2-D matrices and AdamW for the
        rest; with each param group's (peak, final) learning rate for the schedule."""
        config = self.config
        adamw_peaks = config.adamw_peaks()
        adamw = dict(lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, weight_decay=config.weight_decay)
        if config.optimizer == "adamw":
            return AdamW(self.model.parameters(), **adamw), [adamw_peaks]
        hidden, rest = split_muon_parameters(self.model)
        muon_peak, muon_floor = config.muon_peaks()
        muon = Muon(
            hidden,
            lr=muon_peak,
            weight_decay=config.muon_weight_decay if config.muon_weight_decay is not None else config.weight_decay,
            momentum=config.muon_momentum,
            adjust_lr_fn=config.muon_adjust_lr,
            ns_dtype=None if config.muon_ns_dtype == "auto" else DTYPES[config.muon_ns_dtype],
        )
        return MultiOptimizer(muon, AdamW(rest, **adamw)), [(muon_peak, muon_floor), adamw_peaks]

    def _wrap_model(self) -> tuple[nn.Module, nn.Module]:
        """The modules that compute the loss: for training (DDP, compiled as configured) and for evaluation."""
        step_module: nn.Module = _WithLoss(self.model)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            step_module = DistributedDataParallel(step_module, device_ids=ids)
        eval_module: nn.Module = _WithLoss(self.model)
        if self.config.compile:
            step_module, eval_module = torch.compile(step_module), torch.compile(eval_module)
        return step_module, eval_module

    # ---- checkpoints

    def save(self) -> Path | None:
        """Write ckpt_{step}.pt (rank 0 only), prune old ones; return its path (None on other ranks)."""
        if not self.dist.main:
            return None
        path = checkpoints.checkpoint_path(self.out, self.step)
        extra = {
            "train_config": dataclasses.asdict(self.config),
            "rng": checkpoints.capture_rng_state(self.data_rng, self.device),
            "tokens": self.tokens,
            "wall_clock_s": self.wall_clock(),
            "train_time_s": self.train_time(),
        }
        save_checkpoint(self.model, self.optimizer, self.step, path, config=self.model_config.to_dict(), extra=extra)
        checkpoints.prune_checkpoints(self.out, self.config.keep_checkpoints)
        return path

    def restore(self, path: Path) -> None:
        """Continue from checkpoint `path`: weights, optimizer, counters and RNG streams."""
        payload = read_checkpoint(path)
        saved = checkpoints.saved_model_config(payload, path, what="resume")
        checkpoints.check_same_model(saved, self.model_config, what=f"--resume from {path}")
        self.model.load_state_dict(clean_state_dict(payload["model"]))
        self.optimizer.load_state_dict(payload["optimizer"])
        self.step = int(payload["iteration"])
        self.tokens = int(payload.get("tokens", 0))
        self.wall_clock_before = float(payload.get("wall_clock_s", 0.0))
        self.train_time_before = float(payload.get("train_time_s", 0.0))
        checkpoints.restore_rng_state(payload.get("rng", {}), self.data_rng, self.device)

    def load_weights_from(self, path: Path) -> None:
        """Start from checkpoint `path`'s weights (its model config must equal ours, but for how it computes);
        the optimizer, the counters and the RNG streams stay fresh."""
        payload = read_checkpoint(path)
        saved = checkpoints.saved_model_config(payload, path, what="init_from")
        checkpoints.check_same_model(saved, self.model_config, f"init_from={str(path)!r}", COMPUTE_ONLY_FIELDS)
        self.model.load_state_dict(clean_state_dict(payload["model"]))

    # ---- steps

    def wall_clock(self) -> float:
        return self.wall_clock_before + (time.perf_counter() - self.started)

    def train_time(self) -> float:
        """Seconds spent training (this invocation's and earlier ones'), without evaluations and checkpoints."""
        return self.train_time_before + (time.perf_counter() - self.started - self.paused)

    def out_of_time(self) -> bool:
        """Whether the max_time budget is spent. Ranks' clocks differ, so under DDP they agree by an all-reduce
        (the loop asks only at log steps there, where the ranks synchronize anyway)."""
        if self.max_time is None:
            return False
        spent = self.train_time() >= self.max_time
        if self.dist.enabled:
            flag = torch.tensor(float(spent), device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            spent = bool(flag.item())
        return spent

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step; returns (mean loss, grad norm) as device tensors and the learning rate."""
        config, world, rank, accum = self.config, self.dist.world_size, self.dist.rank, self.config.grad_accum_steps
        lr = self.lr_at(self.step + 1, **self.schedule)
        for group, (peak, floor) in zip(self.optimizer.param_groups, self.group_peaks, strict=True):
            group["lr"] = self.lr_at(
                self.step + 1, **self.schedule | dict(max_learning_rate=peak, min_learning_rate=floor)
            )
        shape = (accum, world, config.batch_size)
        starts = sample_starts(len(self.train_data), config.context_length, shape, self.data_rng)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(accum):
            x, y = read_windows(self.train_data, starts[micro, rank], config.context_length, self.device)
            sync = micro == accum - 1 or not self.dist.enabled
            with contextlib.nullcontext() if sync else self.step_module.no_sync(), autocast(self.device, self.dtype):
                loss = self.step_module(x, y)
            (loss / accum).backward()
            loss_sum += loss.detach().float()
        grad_norm = gradient_clipping(self.model.parameters(), config.grad_clip or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += config.tokens_per_step(world)
        return loss_sum / accum, grad_norm, lr

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation batches; each rank scores its slice of every batch."""
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        mine = slice(self.dist.rank * self.config.batch_size, (self.dist.rank + 1) * self.config.batch_size)
        for starts in self.eval_starts:
            x, y = read_windows(self.val_data, starts[mine], self.config.context_length, self.device)
            with autocast(self.device, self.dtype):
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


class _Meter:
    """Train loss, grad norm and tokens/s since the last log line, kept on the device (one sync per log line),
    and the first step whose loss was not finite. Time spent evaluating and checkpointing is not counted."""

    def __init__(self, run: Run):
        self.run = run
        self.sums = torch.zeros(2, device=run.device, dtype=torch.float64)  # (loss sum, grad norm sum)
        self.first_bad = torch.zeros((), dtype=torch.long, device=run.device)
        self.steps, self.tokens, self.paused = 0, 0, 0.0
        self.interval_start = time.perf_counter()
        self.run_start_tokens, self.train_time = run.tokens, 0.0
        self.last_train_loss: float | None = None
        self.checked_step = -1  # the step check_finite last ran at (first_bad changes only in add)

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.first_bad = torch.where((self.first_bad == 0) & ~torch.isfinite(loss), self.run.step, self.first_bad)
        self.sums += torch.stack([loss.double(), grad_norm.double()])
        self.steps += 1
        self.tokens += self.run.config.tokens_per_step(self.run.dist.world_size)

    def record(self, lr: float, last_checkpoint: tuple[Path, int] | None) -> dict[str, Any]:
        """The log record of the interval that ends now (raises NonFiniteLossError first); starts a new one."""
        means = self.run.all_reduce_mean(self.sums).tolist()  # syncs with the device
        self.check_finite(last_checkpoint)
        now = time.perf_counter()
        elapsed = now - self.interval_start - self.paused
        self.train_time += elapsed
        tokens_per_s = self.tokens / elapsed if elapsed > 0 else float("nan")
        self.last_train_loss = means[0] / self.steps
        record = {
            "step": self.run.step,
            "tokens": self.run.tokens,
            "lr": lr,
            "train_loss": self.last_train_loss,
            "grad_norm": means[1] / self.steps,
            "tokens_per_s": tokens_per_s,
            "wall_clock_s": self.run.wall_clock(),
        }
        if self.run.peak_flops:
            record["mfu"] = tokens_per_s * self.run.flops_per_token / self.run.peak_flops
        self.sums.zero_()
        self.steps, self.tokens, self.paused, self.interval_start = 0, 0, 0.0, now
        return record

    def check_finite(self, last_checkpoint: tuple[Path, int] | None) -> None:
        if self.checked_step == self.run.step:  # already checked at this step (log, eval, checkpoint): one sync
            return
        self.checked_step = self.run.step
        worst = self.first_bad.clone()
        if self.run.dist.enabled:
            dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        bad = int(worst.item())
        if bad:
            saved = last_checkpoint is not None and last_checkpoint[0] is not None
            where = (
                f"{last_checkpoint[0]} (step {last_checkpoint[1]})" if saved else "none (no checkpoint was written yet)"
            )
            raise NonFiniteLossError(
                f"the training loss became NaN or inf at step {bad}; stopped without saving. Last good checkpoint: "
                f"{where}. Try a lower --lr, a longer --warmup-steps or --grad-clip 1.0, then --resume."
            )

    @contextlib.contextmanager
    def pause(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - start
            self.run.paused += time.perf_counter() - start

    def tokens_per_s(self) -> float | None:
        """Training throughput of this invocation (logged intervals only)."""
        return (self.run.tokens - self.run_start_tokens) / self.train_time if self.train_time > 0 else None


def split_muon_parameters(model: TransformerLM) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(Muon's, AdamW's) parameters: the blocks' 2-D matrices (attention q/k/v/output, feed-forward) for Muon;
    the embeddings, the LM head and every gain or other 1-D parameter for AdamW. A tied matrix appears once."""
    hidden, rest = [], []
    for name, p in model.named_parameters():
        (hidden if name.startswith("layers.") and p.ndim == 2 else rest).append(p)
    return hidden, rest


def train(config: TrainConfig) -> dict:
    """Run (or, with config.resume, continue) training; return a summary dict.

    Summary keys: run_dir, step, total_steps, tokens, train_loss, val_loss (final evaluation), val_perplexity,
    wall_clock_s, tokens_per_s (training throughput of this invocation), checkpoint (the last one written),
    stopped_early. Raises NonFiniteLossError when the loss turns NaN/inf (no checkpoint is written after that).
    """
    validate_config(config)
    existing = list_checkpoints(config.out)
    if existing and not config.resume:
        raise FileExistsError(
            f"out={config.out!r} already has checkpoints (newest {existing[-1][1].name}); pass --resume to continue "
            "that run or choose a new --out"
        )
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        run = Run(config)
        last_checkpoint = _start(run, existing[-1][1] if existing else None)
        return _loop(run, last_checkpoint)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


def _start(run: Run, newest: Path | None) -> tuple[Path, int] | None:
    """Resume from `newest` or load the init_from weights; write config.json and log.jsonl. Returns the
    (checkpoint, step) the run continues from, if any."""
    config, out = run.config, run.out
    init_from = None
    if newest is not None:
        run.restore(newest)
        # Log lines written after that checkpoint (by the invocation that stopped) belong to steps that will be
        # run again: drop them, so log.jsonl reads as one uninterrupted run.
        run.records = [r for r in read_log(out / "log.jsonl") if r["step"] <= run.step]
    elif config.init_from is not None:
        init_from = checkpoints.resolve_checkpoint(config.init_from, what="init_from")
        run.load_weights_from(init_from)
    if run.dist.main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoints.remove_stale_temps(out)
        meta = {
            "train_config": dataclasses.asdict(config),
            "model_config": run.model_config.to_dict(),
            "git_sha": git_sha(),
            "command_line": sys.argv,
            "torch_version": torch.__version__,
            "device": str(run.device),
            "dtype": str(run.dtype).removeprefix("torch."),
            "world_size": run.dist.world_size,
            "total_steps": run.total_steps,
            "schedule": run.schedule,
            "lr_schedule": config.schedule,
            "max_time_s": run.max_time,
            "resumed_from_step": run.step if config.resume else None,
            "init_from_checkpoint": str(init_from) if init_from is not None else None,
        }
        atomic_write_json(out / "config.json", meta)
        write_log(out / "log.jsonl", run.records)
    return (newest, run.step) if newest is not None else None


def _loop(run: Run, last_checkpoint: tuple[Path, int] | None) -> dict:
    """Train until total_steps (or stop_at_step): log, evaluate, checkpoint and plot at their intervals."""
    config, main = run.config, run.dist.main
    wandb_run = None
    if config.wandb and main:
        config_dict = dataclasses.asdict(config)
        wandb_run = import_wandb().init(
            project=config.wandb_project, name=config.wandb_run_name, config=config_dict, resume="allow"
        )
    from tqdm import tqdm

    show = config.progress and main
    bar = tqdm(total=run.total_steps, initial=run.step, disable=not show, unit="step", dynamic_ncols=True)
    run.started = time.perf_counter()
    meter, val_loss, stopped_early, stopped_by = _Meter(run), None, False, None
    try:
        while run.step < run.total_steps:
            loss, grad_norm, lr = run.train_step()
            meter.add(loss, grad_norm)
            bar.update(1)
            out_of_time = (not run.dist.enabled or run.step % config.log_interval == 0) and run.out_of_time()
            step, is_last = run.step, run.step == run.total_steps or out_of_time
            stop_here = config.stop_at_step is not None and step >= config.stop_at_step
            stopped_by = "max_time" if out_of_time and run.step < run.total_steps else stopped_by
            record: dict[str, Any] = {}
            if step % config.log_interval == 0 or is_last or stop_here:
                record = meter.record(lr, last_checkpoint)
                bar.set_postfix(
                    loss=f"{record['train_loss']:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}", lr=f"{lr:.2e}"
                )
            with meter.pause():
                do_eval = (config.eval_interval and step % config.eval_interval == 0) or is_last
                if do_eval:
                    meter.check_finite(last_checkpoint)
                    val_loss = run.evaluate()
                    record.update(step=step, tokens=run.tokens, val_loss=val_loss, wall_clock_s=run.wall_clock())
                if stopped_by is not None and is_last:
                    record.update(stopped_by=stopped_by, train_time_s=run.train_time())
                if record and main:
                    run.records.append(record)
                    append_log(run.out / "log.jsonl", record)
                    if wandb_run is not None:
                        wandb_run.log(record, step=step)
                do_ckpt = (config.checkpoint_interval and step % config.checkpoint_interval == 0) or is_last
                if do_ckpt or stop_here:
                    meter.check_finite(last_checkpoint)
                    last_checkpoint = (run.save(), step)
                if main and config.plot and (do_eval or do_ckpt or stop_here):
                    plot_losses(run.records, run.out / "loss.png")
            if stopped_by is not None:  # the time budget is spent: the run is done (not resumable work left)
                break
            if stop_here and not is_last:
                stopped_early = True
                break
    finally:
        bar.close()
        if wandb_run is not None:
            wandb_run.finish()
    return _summarize(run, meter, val_loss, last_checkpoint, stopped_early, stopped_by)


def _summarize(run: Run, meter: _Meter, val_loss, last_checkpoint, stopped_early: bool, stopped_by=None) -> dict:
    summary = {
        "run_dir": str(run.out),
        "step": run.step,
        "total_steps": run.total_steps,
        "tokens": run.tokens,
        "train_loss": meter.last_train_loss,
        "val_loss": val_loss,
        "val_perplexity": math.exp(val_loss) if val_loss is not None and val_loss < 700 else None,
        "wall_clock_s": run.wall_clock(),
        "tokens_per_s": meter.tokens_per_s(),
        "checkpoint": str(last_checkpoint[0]) if last_checkpoint and last_checkpoint[0] else None,
        "stopped_early": stopped_early,
        "stopped_by": stopped_by or ("stop_at_step" if stopped_early else None),
        "train_time_s": run.train_time(),
        "max_time_s": run.max_time,
    }
    if run.dist.main:
        atomic_write_json(run.out / "summary.json", summary)
    return summary
