"""Diagnostic probes: train a small TransformerLM on a synthetic task (`probe_tasks`) and measure, in about a
minute on a CPU, whether it learned it: greedy-generation exact match on training and on held-out inputs.

A decoder-only TransformerLM is trained as a prefix LM on `[BOS] X [SEP] Y` with the loss on `Y` only, built from
the package's own pieces: `TransformerLM`, `cross_entropy(..., ignore_index)`, `AdamW`, the cosine schedule,
`gradient_clipping` and `generation.generate`. Training stops early when the train set and the validation set
(not the test set) are both solved exactly; the test accuracy is measured once, at the end.

    cs336-basics probe reversal                 # L=9, V=8: train and test exact match 1.000 on a CPU
    cs336-basics probe add --length 4 --vocab 10 --json add.json
    cs336-basics probe reversal --sweep         # RoPE vs no positions x pre/post/no norm, as a table

Shape letters: N sequences, B batch, T sequence, V vocabulary.
"""

import time
from dataclasses import asdict, dataclass, field, replace
from typing import get_args

import torch
from torch import Tensor

from cs336_basics.config import ModelConfig, NormPlacement
from cs336_basics.generation import generate
from cs336_basics.model import TransformerLM
from cs336_basics.nn_utils import gradient_clipping
from cs336_basics.optimizer import AdamW, get_lr_cosine_schedule
from cs336_basics.workflows.probe_config import ADD_DEFAULTS, TASKS, ProbeConfig, check_config
from cs336_basics.workflows.probe_tasks import (
    IGNORE_INDEX,
    ProbeData,
    answer_loss,
    answer_targets,
    make_task,
    task_input_length,
    task_output_length,
    task_targets,
)


@torch.no_grad()
def teacher_forced_eval(model: TransformerLM, data: ProbeData, split: Tensor, batch_size: int = 1024) -> dict:
    """{"exact_match", "loss"} with the true prefix fed in: one forward pass per batch, no generation.

    A row whose every Y token is the argmax under teacher forcing is also generated exactly by greedy decoding
    (up to floating-point ties), so training uses this as its cheap early-stop test; reported accuracies always
    come from `greedy_accuracy`.
    """
    correct, loss_sum = 0, 0.0
    for rows in split.split(batch_size):
        logits = model(rows[:, :-1])
        loss_sum += float(answer_loss(logits, rows, data.x_len)) * rows.shape[0]
        predicted = logits[:, data.x_len + 1 :].argmax(-1)  # (B, Ly)
        correct += int((predicted == data.answers(rows)).all(dim=-1).sum())
    n = split.shape[0]
    return {"exact_match": correct / n, "loss": loss_sum / n}


@torch.no_grad()
def greedy_accuracy(model: TransformerLM, data: ProbeData, split: Tensor, batch_size: int = 1024) -> dict:
    """Greedy-generate Y from `[BOS] X [SEP]`; returns {"exact_match": float, "per_position": [float] * Ly}."""
    hits = torch.zeros(data.y_len, dtype=torch.long)
    exact = 0
    for rows in split.split(batch_size):
        prompt = rows[:, : data.x_len + 2]
        predicted = generate(model, prompt, max_new_tokens=data.y_len, temperature=0.0)  # (B, Ly)
        right = (predicted == data.answers(rows)).cpu()
        hits += right.sum(dim=0)
        exact += int(right.all(dim=-1).sum())
    n = split.shape[0]
    return {"exact_match": exact / n, "per_position": [round(h / n, 6) for h in hits.tolist()]}


# --------------------------------------------------------------------------------------------------------------------
# Training


@dataclass
class ProbeResult:
    """What `run_probe` measured. Accuracies are greedy-generation exact-match fractions in [0, 1]."""

    config: dict
    train_exact_match: float
    val_exact_match: float | None  # None without a validation split
    test_exact_match: float
    train_per_position: list[float]
    test_per_position: list[float]
    steps: int  # optimizer steps taken
    stopped_early: bool
    final_loss: float
    train_seconds: float  # the training loop, including the periodic early-stop checks
    wall_seconds: float  # data, model, training and the final evaluation
    num_parameters: int
    split_sizes: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # one dict per early-stop check: step, loss, val/train accuracy

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(config: ProbeConfig, data: ProbeData) -> TransformerLM:
    """The TransformerLM for `data`, its context either the task's sequence length or `config.context_length`."""
    context_length = data.context_length if config.context_length is None else config.context_length
    if context_length < data.context_length:
        raise ValueError(
            f"context_length={context_length} is too short for task={data.task!r} at length={data.length}: "
            f"[BOS] X [SEP] Y needs {data.context_length} positions; raise --context-length or lower --length"
        )
    model_config = ModelConfig.from_settings(
        asdict(config) | dict(vocab_size=data.model_vocab_size, context_length=context_length)
    )
    return TransformerLM(model_config, device=torch.device(config.device))


@dataclass
class TrainedProbe:
    """A probe model after training (`train_probe`), with its data and how the training went."""

    model: TransformerLM
    data: ProbeData
    steps: int
    stopped_early: bool
    final_loss: float
    train_seconds: float
    history: list


def run_probe(config: ProbeConfig) -> ProbeResult:
    """Build the task, train a fresh model on it, and report train/val/test greedy exact match and timings.

    Deterministic for a given config on a given device (data from numpy's generator, init and batches from
    `config.seed`); the global torch RNG is left as it was.
    """
    start = time.perf_counter()
    trained = train_probe(config)
    model, data = trained.model, trained.data
    device = torch.device(config.device)
    train, val, test = data.train.to(device), data.val.to(device), data.test.to(device)
    train_acc = greedy_accuracy(model, data, train)
    val_acc = greedy_accuracy(model, data, val) if val.shape[0] else {"exact_match": None}
    test_acc = greedy_accuracy(model, data, test)
    return ProbeResult(
        config=config.to_dict(),
        train_exact_match=train_acc["exact_match"],
        val_exact_match=val_acc["exact_match"],
        test_exact_match=test_acc["exact_match"],
        train_per_position=train_acc["per_position"],
        test_per_position=test_acc["per_position"],
        steps=trained.steps,
        stopped_early=trained.stopped_early,
        final_loss=trained.final_loss,
        train_seconds=trained.train_seconds,
        wall_seconds=round(time.perf_counter() - start, 3),
        num_parameters=model.num_parameters(),
        split_sizes={"train": train.shape[0], "val": val.shape[0], "test": test.shape[0]},
        history=trained.history,
    )


def train_probe(config: ProbeConfig) -> TrainedProbe:
    """Build the task and train a fresh model on it (the training half of `run_probe`), left in eval mode.

    trained = train_probe(ProbeConfig(task="reversal", length=6))
    greedy_accuracy(trained.model, trained.data, trained.data.test)["exact_match"]
    """
    check_config(config)
    data = make_task(
        config.task,
        config.length,
        config.vocab,
        config.train_size,
        config.test_size,
        val_size=config.val_size,
        shift=config.shift,
        seed=config.seed,
    )
    device = torch.device(config.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = build_model(config, data)
    train, val = data.train.to(device), data.val.to(device)
    optimizer = AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batch_rng = torch.Generator(device="cpu").manual_seed(config.seed + 1)

    train_start = time.perf_counter()
    step, stopped_early, solved_checks = 0, False, 0
    history: list[dict] = []
    model.train()
    while step < config.steps:
        lr = get_lr_cosine_schedule(
            step, config.lr, config.lr * config.min_lr_ratio, min(config.warmup_steps, config.steps), config.steps
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = train[torch.randint(0, train.shape[0], (config.batch_size,), generator=batch_rng).to(device)]
        loss = answer_loss(model(batch[:, :-1]), batch, data.x_len)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gradient_clipping(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
            check = _check_progress(model, data, train, val)
            history.append({"step": step, "loss": round(float(loss.detach()), 6)} | check)
            history[-1]["seconds"] = round(time.perf_counter() - train_start, 3)
            solved_checks = solved_checks + 1 if check["solved"] else 0
            if solved_checks >= config.stop_after:
                stopped_early = step < config.steps
                break
    train_seconds = round(time.perf_counter() - train_start, 3)
    model.eval()
    return TrainedProbe(model, data, step, stopped_early, float(loss.detach()), train_seconds, history)


def _check_progress(model: TransformerLM, data: ProbeData, train: Tensor, val: Tensor) -> dict:
    """One early-stop check: val (small) first, then train only if val is solved. Never looks at the test split."""
    model.eval()
    try:
        entry: dict = {"val_exact_match": None, "val_loss": None, "train_exact_match": None}
        if val.shape[0]:
            val_stats = teacher_forced_eval(model, data, val)
            entry |= {"val_exact_match": val_stats["exact_match"], "val_loss": round(val_stats["loss"], 6)}
            if val_stats["exact_match"] < 1.0:
                return entry | {"solved": False}
        entry["train_exact_match"] = teacher_forced_eval(model, data, train)["exact_match"]
        return entry | {"solved": entry["train_exact_match"] == 1.0}
    finally:
        model.train()


# --------------------------------------------------------------------------------------------------------------------
# Sweeps

SWEEP_ARCHITECTURES: tuple[dict, ...] = tuple(
    {"positions": positions, "norm": norm} for positions in ("rope", "none") for norm in get_args(NormPlacement)
)


def sweep_configs(config: ProbeConfig, lengths: list[int] | None = None, architectures=SWEEP_ARCHITECTURES) -> list:
    """The grid `lengths` x `architectures` (dicts of ProbeConfig overrides) around `config`, lengths outermost."""
    return [replace(config, length=length, **arch) for length in (lengths or [config.length]) for arch in architectures]


def format_table(results: list[ProbeResult]) -> str:
    """A fixed-width table, one row per run: task, L, positions, norm, ffn, train/test exact match, steps, seconds."""
    header = (
        f"{'task':<10} {'L':>3} {'positions':<9} {'norm':<4} {'ffn':<6} {'train':>6} {'test':>6} {'steps':>6} {'s':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        c = r.config
        lines.append(
            f"{c['task']:<10} {c['length']:>3} {c['positions']:<9} {c['norm']:<4} {c['ffn']:<6} "
            f"{r.train_exact_match:>6.3f} {r.test_exact_match:>6.3f} {r.steps:>6} {r.wall_seconds:>6.1f}"
        )
    return "\n".join(lines)


def format_result(result: ProbeResult) -> str:
    """A short human-readable report of one run."""
    c = result.config
    per_position = " ".join(f"{a:.3f}" for a in result.test_per_position)
    return (
        f"probe {c['task']}: L={c['length']} V={c['vocab']} seed={c['seed']} "
        f"[positions={c['positions']} norm={c['norm']} ffn={c['ffn']}] "
        f"(train {result.split_sizes['train']}, val {result.split_sizes['val']}, test {result.split_sizes['test']}; "
        f"{result.num_parameters:,} parameters)\n"
        f"  train exact match {result.train_exact_match:.3f}   val {_fmt(result.val_exact_match)}   "
        f"test {result.test_exact_match:.3f}\n"
        f"  test per-position accuracy: {per_position}\n"
        f"  {result.steps} steps{' (stopped early: train and val solved)' if result.stopped_early else ''}, "
        f"final loss {result.final_loss:.4f}, training {result.train_seconds:.1f} s, wall {result.wall_seconds:.1f} s"
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------------------------------------------------
# Validation


__all__ = [
    "ADD_DEFAULTS",
    "IGNORE_INDEX",
    "TASKS",
    "ProbeConfig",
    "ProbeData",
    "ProbeResult",
    "answer_loss",
    "answer_targets",
    "build_model",
    "format_result",
    "format_table",
    "greedy_accuracy",
    "make_task",
    "run_probe",
    "sweep_configs",
    "task_input_length",
    "task_output_length",
    "task_targets",
    "teacher_forced_eval",
]
