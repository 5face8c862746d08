"""The probe tasks: synthetic sequence-to-sequence data, `[BOS] X [SEP] Y`, and the loss on the Y segment only.

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

Shape letters: N sequences, B batch, T sequence, V vocabulary.
"""

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from cs336_basics.config import check_int
from cs336_basics.nn_utils import cross_entropy
from cs336_basics.workflows.probe_config import check_task

IGNORE_INDEX = -100  # the target of every non-Y position


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
    check_task(task)
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
    check_task(task)
    check_int("length", length, 1)
    check_int("vocab", vocab, 2)
    check_int("train_size", train_size, 1)
    check_int("test_size", test_size, 1)
    check_int("val_size", val_size, 0)
    check_int("shift", shift, 0)
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
