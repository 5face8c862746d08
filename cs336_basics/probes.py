"""Diagnostic probes: synthetic sequence tasks that show, in about a minute on a CPU, that the stack can learn.

A decoder-only TransformerLM is trained as a prefix LM on `[BOS] X [SEP] Y`; the next-token loss is taken on the
`Y` segment only (every other target is `ignore_index`), and the model is evaluated by greedy generation of `Y`
from the prompt `[BOS] X [SEP]` with exact-sequence match. Everything is built from the package's own pieces:
`TransformerLM`, `cross_entropy(..., ignore_index)`, `AdamW`, the cosine schedule, `gradient_clipping` and
`generation.generate`.

Tasks (data symbols are 0 .. V-1; BOS = V and SEP = V+1, so the model's vocabulary is V + 2):

    reversal   Y[t] = X[L-1-t]                     (needs positions: which input goes where)
    inversion  Y[t] = V-1-X[t]                     (a token-wise content map plus the alignment t -> t)
    copy       Y[t] = X[t]
    sort       Y = X sorted ascending              (needs no positions: a multiset in, a multiset out)
    shift      Y[t] = X[(t+k) mod L]               (cyclic left shift by k = `shift`)
    add        X = a[0..L-1] b[0..L-1], Y = s[0..L] (base-V addition, least significant digit first)

`add` in detail: a and b are L-digit numbers in base V (leading zeros allowed), written least significant digit
first, and X is their concatenation (2L symbols). Y is s = a + b in the same order with L+1 digits, the last one
the final carry. Example with V=10, L=3: a=479, b=25 -> X = 9 7 4 5 2 0, Y = 4 0 5 0 (504 reversed, carry 0).

Held-out data: the train, validation and test inputs X are distinct sequences sampled without replacement, and
`make_task` checks that no X of the validation or test split occurs in the training split. Training stops early
when the train set and the validation set (not the test set) are both solved exactly by greedy generation; the
test accuracy is measured once, at the end.

    cs336-basics probe reversal                 # L=9, V=8: train and test exact match 1.000 on a CPU
    cs336-basics probe add --length 4 --vocab 10 --json add.json
    cs336-basics probe reversal --sweep         # RoPE vs no positions x pre/post/no norm, as a table

Shape letters: N sequences, B batch, T sequence, V vocabulary.
"""

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .files import atomic_write_text
from .generation import generate
from .layers import ModelConfig, PositionKind, TransformerLM
from .nn_utils import cross_entropy, gradient_clipping
from .optimizer import AdamW, get_lr_cosine_schedule

TASKS: tuple[str, ...] = ("reversal", "inversion", "copy", "sort", "shift", "add")
IGNORE_INDEX = -100  # the target of every non-Y position
# The CLI's defaults for `add`: decimal, 5-digit operands (X has 2L symbols, so L=9 would mean an 18-symbol prompt).
ADD_DEFAULTS = {"length": 5, "vocab": 10}


# --------------------------------------------------------------------------------------------------------------------
# Data


def task_input_length(task: str, length: int) -> int:
    """Length of X: L, or 2L for `add` (two L-digit operands)."""
    return 2 * length if task == "add" else length


def task_output_length(task: str, length: int) -> int:
    """Length of Y: L, or L+1 for `add` (the final carry)."""
    return length + 1 if task == "add" else length


def task_targets(task: str, x: Int[Tensor, " N Lx"], vocab: int, shift: int = 1) -> Int[Tensor, " N Ly"]:
    """The answer Y for each input row X (symbols in [0, vocab)).

    >>> task_targets("reversal", torch.tensor([[1, 2, 3]]), vocab=4).tolist()
    [[3, 2, 1]]
    >>> task_targets("add", torch.tensor([[9, 7, 4, 5, 2, 0]]), vocab=10).tolist()  # 479 + 25 = 504
    [[4, 0, 5, 0]]
    """
    _check_task(task)
    if task == "reversal":
        return x.flip(-1)
    if task == "inversion":
        return vocab - 1 - x
    if task == "copy":
        return x.clone()
    if task == "sort":
        return x.sort(dim=-1).values
    if task == "shift":
        return x.roll(-shift, dims=-1)
    # add: schoolbook addition, least significant digit first, carrying left to right.
    length = x.shape[-1] // 2
    a, b = x[..., :length], x[..., length:]
    digits = []
    carry = torch.zeros_like(x[..., 0])
    for t in range(length):
        total = a[..., t] + b[..., t] + carry
        digits.append(total % vocab)
        carry = total // vocab
    digits.append(carry)
    return torch.stack(digits, dim=-1)


@dataclass(frozen=True)
class ProbeData:
    """One task's sequences `[BOS] X [SEP] Y`, each split an (N, T) int64 tensor with T = Lx + Ly + 2."""

    task: str
    length: int
    vocab: int
    shift: int
    x_len: int
    y_len: int
    train: Tensor
    val: Tensor
    test: Tensor

    @property
    def bos_id(self) -> int:
        return self.vocab

    @property
    def sep_id(self) -> int:
        return self.vocab + 1

    @property
    def model_vocab_size(self) -> int:
        return self.vocab + 2

    @property
    def seq_len(self) -> int:
        return self.x_len + self.y_len + 2

    @property
    def context_length(self) -> int:
        """Positions the model sees: the whole sequence but its last token (which is only ever a target)."""
        return self.seq_len - 1

    def inputs(self, split: Tensor) -> Int[Tensor, " N Lx"]:
        return split[:, 1 : 1 + self.x_len]

    def answers(self, split: Tensor) -> Int[Tensor, " N Ly"]:
        return split[:, self.x_len + 2 :]


def make_task(
    task: str,
    length: int,
    vocab: int,
    train_size: int,
    test_size: int,
    val_size: int = 0,
    shift: int = 1,
    seed: int = 0,
) -> ProbeData:
    """Sample `train_size + val_size + test_size` distinct inputs X, split them, and build `[BOS] X [SEP] Y`.

    The split is checked, not assumed: an X of the validation or test split that also occurs in the training split
    raises RuntimeError (a sampler bug) instead of silently inflating held-out accuracy. Inputs are distinct, but
    for `sort` two distinct inputs can share an answer. Raises ValueError when fewer than the requested number of
    distinct X exist (vocab ** Lx).

    >>> data = make_task("reversal", 3, 4, train_size=2, test_size=1, seed=0)
    >>> data.train.shape, data.bos_id, data.sep_id  # each row: BOS x0 x1 x2 SEP x2 x1 x0
    (torch.Size([2, 8]), 4, 5)
    """
    _check_task(task)
    _check_int("length", length, 1)
    _check_int("vocab", vocab, 2)
    _check_int("train_size", train_size, 1)
    _check_int("test_size", test_size, 1)
    _check_int("val_size", val_size, 0)
    _check_int("shift", shift, 0)
    if task == "shift" and not 0 < shift < length:
        raise ValueError(f"shift={shift} must be in [1, length-1] = [1, {length - 1}] for a non-trivial cyclic shift")
    x_len, y_len = task_input_length(task, length), task_output_length(task, length)
    needed = train_size + val_size + test_size
    available = vocab**x_len
    if needed > available:
        raise ValueError(
            f"train_size + val_size + test_size = {needed} distinct inputs requested, but only vocab**{x_len} = "
            f"{available} exist for task={task!r}, length={length}, vocab={vocab}; use a larger --length or --vocab"
        )
    x = _sample_distinct(np.random.default_rng(seed), needed, x_len, vocab)
    x = torch.from_numpy(x).long()
    train_x, val_x, test_x = x.split([train_size, val_size, test_size])
    seen = {tuple(row) for row in train_x.tolist()}
    for name, split in (("val", val_x), ("test", test_x)):
        overlap = sum(tuple(row) in seen for row in split.tolist())
        if overlap:  # an explicit check rather than an assert, so that `python -O` keeps it
            raise RuntimeError(f"{overlap} of the {split.shape[0]} {name} inputs also occur in the training split")

    def build(xs: Tensor) -> Tensor:
        n = xs.shape[0]
        bos = torch.full((n, 1), vocab, dtype=torch.long)
        sep = torch.full((n, 1), vocab + 1, dtype=torch.long)
        return torch.cat([bos, xs, sep, task_targets(task, xs, vocab, shift)], dim=1)  # (N, T)

    return ProbeData(
        task=task,
        length=length,
        vocab=vocab,
        shift=shift,
        x_len=x_len,
        y_len=y_len,
        train=build(train_x),
        val=build(val_x),
        test=build(test_x),
    )


def _sample_distinct(rng: np.random.Generator, n: int, width: int, vocab: int) -> np.ndarray:
    """n distinct rows of `width` symbols in [0, vocab), in random order."""
    space = vocab**width
    if space <= max(4 * n, 1 << 16):
        # Small space: a random permutation of all codes, decoded to base-vocab digits. Rejection sampling would
        # stall near the space's size.
        codes = rng.permutation(space)[:n]
        return np.stack([(codes // vocab**i) % vocab for i in range(width)], axis=1).astype(np.int64)
    rows: dict[bytes, np.ndarray] = {}  # insertion-ordered, so the order stays random and reproducible
    while len(rows) < n:
        for row in rng.integers(0, vocab, size=(n - len(rows) + 16, width), dtype=np.int64):
            rows.setdefault(row.tobytes(), row)
    return np.stack(list(rows.values())[:n])


# --------------------------------------------------------------------------------------------------------------------
# Loss and evaluation


def answer_targets(sequences: Int[Tensor, " N T"], x_len: int) -> Int[Tensor, " N T-1"]:
    """Next-token targets for `sequences[:, :-1]` with every target outside Y set to IGNORE_INDEX.

    Input position i predicts sequences[:, i+1]; Y starts at sequence index x_len + 2, so targets 0 .. x_len (X's
    tokens and SEP) are ignored and targets x_len+1 .. end are Y.
    """
    targets = sequences[:, 1:].clone()
    targets[:, : x_len + 1] = IGNORE_INDEX
    return targets


def answer_loss(logits: Float[Tensor, " N T-1 V"], sequences: Int[Tensor, " N T"], x_len: int) -> Float[Tensor, ""]:
    """Mean cross-entropy over the Y tokens only; `logits` are the model's outputs on `sequences[:, :-1]`."""
    return cross_entropy(logits, answer_targets(sequences, x_len), ignore_index=IGNORE_INDEX)


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


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """Everything one probe run needs. Defaults: reversal at L=9, V=8, solved exactly in well under a minute."""

    task: str = "reversal"
    length: int = 9
    vocab: int = 8  # small on purpose: repeated symbols make content matching fail, so positions must be learned
    shift: int = 1
    train_size: int = 4000
    val_size: int = 500
    test_size: int = 1000
    steps: int = 1500  # the most optimizer steps; training stops early once train and val are solved
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 50  # steps between early-stop checks; 0 = never stop early
    stop_after: int = 3  # consecutive checks with train and val solved before stopping (a margin against luck)
    seed: int = 0
    device: str = "cpu"
    context_length: int | None = None  # None: exactly the sequence length the task needs
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    d_ff: int | None = 64  # the tasks need routing, not a big feed-forward; None = the LM default
    rope_theta: float = 100.0  # sequences of ~20 tokens: a short base period separates nearby positions better
    norm: str = "pre"
    positions: str = "rope"
    ffn: str = "swiglu"
    tie_embeddings: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


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
    model_config = ModelConfig(
        vocab_size=data.model_vocab_size,
        context_length=context_length,
        d_model=config.d_model,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        d_ff=config.d_ff,
        rope_theta=config.rope_theta,
        norm=config.norm,
        positions=config.positions,
        ffn=config.ffn,
        tie_embeddings=config.tie_embeddings,
    )
    return TransformerLM(model_config, device=torch.device(config.device))


def run_probe(config: ProbeConfig) -> ProbeResult:
    """Build the task, train a fresh model on it, and report train/val/test greedy exact match and timings.

    Deterministic for a given config on a given device (data from numpy's generator, init and batches from
    `config.seed`); the global torch RNG is left as it was.
    """
    _check_config(config)
    start = time.perf_counter()
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
    train, val, test = data.train.to(device), data.val.to(device), data.test.to(device)
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
    loss_value = float(loss.detach())
    train_seconds = time.perf_counter() - train_start

    model.eval()
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
        steps=step,
        stopped_early=stopped_early,
        final_loss=loss_value,
        train_seconds=round(train_seconds, 3),
        wall_seconds=round(time.perf_counter() - start, 3),
        num_parameters=model.num_parameters(),
        split_sizes={"train": train.shape[0], "val": val.shape[0], "test": test.shape[0]},
        history=history,
    )


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
    {"positions": positions, "norm": norm} for positions in ("rope", "none") for norm in ("pre", "post", "none")
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


def write_json_atomic(path: str | Path, payload) -> None:
    """Write `payload` as JSON to `path` via a temporary file in the same directory and a rename."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--json {str(path)!r}: directory {str(path.parent)!r} does not exist")
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------------------------
# Validation


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not a probe task; choose one of {', '.join(TASKS)}")


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def _check_config(config: ProbeConfig) -> None:
    _check_task(config.task)
    _check_int("steps", config.steps, 1)
    _check_int("batch_size", config.batch_size, 1)
    _check_int("eval_every", config.eval_every, 0)
    _check_int("stop_after", config.stop_after, 1)
    _check_int("warmup_steps", config.warmup_steps, 0)
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ValueError(f"lr={config.lr} must be a positive finite number")
    if not 0 <= config.min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio={config.min_lr_ratio} must be in [0, 1]")
    if not config.grad_clip > 0:
        raise ValueError(f"grad_clip={config.grad_clip} must be > 0")
    if config.context_length is not None:
        _check_int("context_length", config.context_length, 1)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={config.device!r} requested but CUDA is not available; use --device cpu")


# --------------------------------------------------------------------------------------------------------------------
# Command line


def add_parser(subparsers) -> None:
    d = ProbeConfig()
    p = subparsers.add_parser(
        "probe",
        help="train a small model on a synthetic task (reversal, inversion, copy, sort, shift, add) and report "
        "train / held-out exact match",
        description="Diagnostic probe: a prefix LM on [BOS] X [SEP] Y, loss on Y only, greedy generation of Y, "
        "exact-sequence match on training inputs and on held-out inputs that never occur in training. "
        "Example: cs336-basics probe reversal --sweep",
    )
    p.add_argument("task", help=f"the task: {', '.join(TASKS)}")
    p.add_argument(
        "--length",
        type=int,
        default=None,
        help=f"L, symbols in X, or digits per operand for add (default {d.length}; {ADD_DEFAULTS['length']} for add)",
    )
    p.add_argument(
        "--vocab",
        type=int,
        default=None,
        help=f"V, data symbols 0..V-1, or the base for add (default {d.vocab}; {ADD_DEFAULTS['vocab']} for add)",
    )
    p.add_argument("--shift", type=int, default=d.shift, help=f"k for the shift task, in [1, L-1] (default {d.shift})")
    p.add_argument("--train-size", type=int, default=d.train_size, help=f"training sequences (default {d.train_size})")
    p.add_argument(
        "--val-size",
        type=int,
        default=d.val_size,
        help=f"validation sequences for early stopping, 0 = none (default {d.val_size})",
    )
    p.add_argument(
        "--test-size", type=int, default=d.test_size, help=f"held-out test sequences (default {d.test_size})"
    )
    p.add_argument("--steps", type=int, default=d.steps, help=f"maximum optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"sequences per step (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate of the cosine schedule (default {d.lr})")
    p.add_argument(
        "--min-lr-ratio",
        type=float,
        default=d.min_lr_ratio,
        help=f"final lr as a fraction of --lr (default {d.min_lr_ratio})",
    )
    p.add_argument(
        "--warmup-steps", type=int, default=d.warmup_steps, help=f"linear warmup steps (default {d.warmup_steps})"
    )
    p.add_argument(
        "--weight-decay", type=float, default=d.weight_decay, help=f"AdamW weight decay (default {d.weight_decay})"
    )
    p.add_argument(
        "--grad-clip", type=float, default=d.grad_clip, help=f"max global gradient L2 norm (default {d.grad_clip})"
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help=f"steps between early-stop checks on train+val, 0 = never stop early (default {d.eval_every})",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=d.stop_after,
        help="consecutive early-stop checks with train and val exact (teacher forced) before stopping "
        f"(default {d.stop_after})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed for data, init and batches (default {d.seed})")
    p.add_argument("--device", default=d.device, help=f"torch device (default {d.device})")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch, 0 = torch's default (default 1: fastest for these tiny models)",
    )
    p.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="model context in tokens (default: exactly what the task needs, 2L+1 or 3L+2 for add)",
    )
    p.add_argument("--d-model", type=int, default=d.d_model, help=f"model width (default {d.d_model})")
    p.add_argument("--num-layers", type=int, default=d.num_layers, help=f"Transformer blocks (default {d.num_layers})")
    p.add_argument("--num-heads", type=int, default=d.num_heads, help=f"attention heads (default {d.num_heads})")
    p.add_argument(
        "--d-ff",
        type=int,
        default=d.d_ff,
        help=f"feed-forward width; 0 = the LM's rule, 8/3 d_model rounded up to 64 (swiglu) or 4 d_model (silu) "
        f"(default {d.d_ff})",
    )
    p.add_argument(
        "--rope-theta", type=float, default=d.rope_theta, help=f"RoPE base period theta (default {d.rope_theta:g})"
    )
    p.add_argument(
        "--norm", choices=("pre", "post", "none"), default=d.norm, help=f"RMSNorm placement (default {d.norm})"
    )
    p.add_argument(
        "--positions",
        choices=get_args(PositionKind),
        default=d.positions,
        help=f"position information (default {d.positions})",
    )
    p.add_argument("--ffn", choices=("swiglu", "silu"), default=d.ffn, help=f"feed-forward kind (default {d.ffn})")
    p.add_argument(
        "--tie-embeddings", action="store_true", help="share the input embedding and output head (default: untied)"
    )
    p.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="also write the result(s) as JSON to PATH, atomically (default: none)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="run the task for positions rope/none x norm pre/post/none and print a table",
    )
    p.add_argument(
        "--sweep-lengths",
        default=None,
        metavar="L1,L2,...",
        help="with --sweep: also sweep these lengths, e.g. 5,9,13 (default: --length only)",
    )
    p.set_defaults(func=run)


def _parse_lengths(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--sweep-lengths={text!r} must be comma-separated integers, e.g. 5,9,13") from None
    if not lengths or min(lengths) < 1:
        raise ValueError(f"--sweep-lengths={text!r} must list at least one length, each >= 1")
    return lengths


def run(args: argparse.Namespace) -> int:
    if args.threads < 0:
        raise ValueError(f"--threads={args.threads} must be >= 0 (0 = torch's default)")
    if args.sweep_lengths is not None and not args.sweep:
        raise ValueError("--sweep-lengths needs --sweep")
    lengths = _parse_lengths(args.sweep_lengths)
    if args.json is not None and not Path(args.json).parent.is_dir():
        raise FileNotFoundError(f"--json {args.json!r}: directory {str(Path(args.json).parent)!r} does not exist")
    task_defaults = ADD_DEFAULTS if args.task == "add" else {"length": ProbeConfig.length, "vocab": ProbeConfig.vocab}
    config = ProbeConfig(
        task=args.task,
        length=args.length if args.length is not None else task_defaults["length"],
        vocab=args.vocab if args.vocab is not None else task_defaults["vocab"],
        shift=args.shift,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr_ratio=args.min_lr_ratio,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        eval_every=args.eval_every,
        stop_after=args.stop_after,
        seed=args.seed,
        device=args.device,
        context_length=args.context_length,
        d_model=args.d_model,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        d_ff=args.d_ff or None,
        rope_theta=args.rope_theta,
        norm=args.norm,
        positions=args.positions,
        ffn=args.ffn,
        tie_embeddings=args.tie_embeddings,
    )
    configs = sweep_configs(config, lengths) if args.sweep else [config]
    for c in configs:  # fail on a bad setting before spending minutes on the runs before it
        _check_config(c)
        build_model(c, make_task(c.task, c.length, c.vocab, c.train_size, c.test_size, c.val_size, c.shift, c.seed))
    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        results = []
        for c in configs:
            result = run_probe(c)
            results.append(result)
            print(format_result(result), flush=True)
    finally:
        torch.set_num_threads(previous_threads)
    if args.sweep:
        print()
        print(format_table(results))
    if args.json is not None:
        payload = [r.to_dict() for r in results] if args.sweep else results[0].to_dict()
        write_json_atomic(args.json, payload)
        print(f"wrote {args.json}")
    return 0
