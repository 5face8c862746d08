"""Diagnostic probes: task generators, held-out disjointness, the answer-only loss mask, a real run, the CLI."""

import json
import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from cs336_basics.cli import main
from cs336_basics.fileio import atomic_write_json
from cs336_basics.workflows import probe as probes
from cs336_basics.workflows import probe_tasks
from cs336_basics.workflows.probe import (
    IGNORE_INDEX,
    TASKS,
    ProbeConfig,
    answer_loss,
    answer_targets,
    format_table,
    make_task,
    run_probe,
    task_targets,
)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the shared CI machine has only two cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------------------------------
# Targets of each task


@pytest.mark.parametrize(
    ("task", "x", "vocab", "shift", "expected"),
    [
        ("reversal", [3, 1, 4, 1, 5], 8, 1, [5, 1, 4, 1, 3]),
        ("inversion", [0, 1, 7, 3], 8, 1, [7, 6, 0, 4]),
        ("copy", [2, 0, 2, 5], 8, 1, [2, 0, 2, 5]),
        ("sort", [3, 1, 4, 1, 5], 8, 1, [1, 1, 3, 4, 5]),
        ("shift", [0, 1, 2, 3, 4], 8, 1, [1, 2, 3, 4, 0]),
        ("shift", [0, 1, 2, 3, 4], 8, 2, [2, 3, 4, 0, 1]),
        # add, V=10, least significant digit first: 479 + 25 = 504 (two carries), 999 + 1 = 1000 (a carry chain
        # into the final carry digit), 123 + 456 = 579 (no carry).
        ("add", [9, 7, 4, 5, 2, 0], 10, 1, [4, 0, 5, 0]),
        ("add", [9, 9, 9, 1, 0, 0], 10, 1, [0, 0, 0, 1]),
        ("add", [3, 2, 1, 6, 5, 4], 10, 1, [9, 7, 5, 0]),
        # add in base 2: 3 + 1 = 4 -> digits (lsb first) 0 0 1
        ("add", [1, 1, 1, 0], 2, 1, [0, 0, 1]),
    ],
)
def test_task_targets_hand_worked_examples(task, x, vocab, shift, expected):
    assert task_targets(task, torch.tensor([x]), vocab, shift).tolist() == [expected]


@given(
    base=st.integers(2, 16),
    length=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_add_targets_match_integer_arithmetic(base, length, seed):
    """Reading X's two halves and Y as little-endian base-V numbers gives a + b = s, for every carry pattern."""
    rng = random.Random(seed)
    a, b = rng.randrange(base**length), rng.randrange(base**length)

    def digits(n, width):
        return [(n // base**i) % base for i in range(width)]

    y = task_targets("add", torch.tensor([digits(a, length) + digits(b, length)]), base)
    assert y.tolist() == [digits(a + b, length + 1)]


def test_task_targets_rejects_unknown_task():
    with pytest.raises(ValueError, match="task='mirror' is not a probe task"):
        task_targets("mirror", torch.zeros(1, 3, dtype=torch.long), 4)


# --------------------------------------------------------------------------------------------------------------------
# Splits and layout


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize(("length", "vocab"), [(3, 4), (7, 10)])  # 4**3 = 64 inputs (enumerated) vs 10**7 (sampled)
def test_make_task_layout_and_disjoint_splits(task, length, vocab):
    """[BOS] X [SEP] Y with Y = task_targets(X); every X distinct; no val/test X occurs in training."""
    sizes = (30, 10, 20) if vocab**length < 1000 else (300, 100, 200)
    if task == "add" and vocab**length < 1000:
        length = 2  # 4**(2*2) = 256 inputs
    data = make_task(task, length, vocab, train_size=sizes[0], val_size=sizes[1], test_size=sizes[2], seed=3)
    assert (data.train.shape[0], data.val.shape[0], data.test.shape[0]) == sizes
    everything = torch.cat([data.train, data.val, data.test])
    assert everything.shape[1] == data.seq_len == data.x_len + data.y_len + 2
    assert (everything[:, 0] == data.bos_id).all() and (everything[:, data.x_len + 1] == data.sep_id).all()
    x = data.inputs(everything)
    assert x.min() >= 0 and x.max() < vocab
    assert torch.equal(data.answers(everything), task_targets(task, x, vocab, data.shift))
    rows = [tuple(r) for r in x.tolist()]
    assert len(set(rows)) == len(rows)
    train_rows = {tuple(r) for r in data.inputs(data.train).tolist()}
    held_out = data.inputs(torch.cat([data.val, data.test])).tolist()
    assert not any(tuple(r) in train_rows for r in held_out)


def test_make_task_can_use_every_input_in_a_small_space():
    """4**3 = 64 inputs split 40 / 4 / 20 uses every input exactly once."""
    data = make_task("reversal", 3, 4, train_size=40, val_size=4, test_size=20)
    rows = {tuple(r) for r in data.inputs(torch.cat([data.train, data.val, data.test])).tolist()}
    assert len(rows) == 64


def test_make_task_is_deterministic_per_seed():
    a, b, c = (make_task("sort", 6, 10, 50, 20, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(task="mirror"), "task='mirror' is not a probe task"),
        (dict(length=0), "length=0 must be a positive integer"),
        (dict(vocab=1), "vocab=1 must be an integer >= 2"),
        (dict(train_size=0), "train_size=0 must be a positive integer"),
        (dict(test_size=0), "test_size=0 must be a positive integer"),
        (dict(val_size=-1), "val_size=-1 must be an integer >= 0"),
        (
            dict(length=3, vocab=4, train_size=60, test_size=10),
            "70 distinct inputs requested, but only vocab\\*\\*3 = 64",
        ),
        (dict(task="shift", length=4, shift=4), "shift=4 must be in \\[1, length-1\\]"),
        (dict(task="shift", length=4, shift=0), "shift=0 must be in \\[1, length-1\\]"),
    ],
)
def test_make_task_rejects_bad_arguments(kwargs, match):
    args = dict(task="reversal", length=5, vocab=8, train_size=20, test_size=10) | kwargs
    with pytest.raises(ValueError, match=match):
        make_task(**args)


# --------------------------------------------------------------------------------------------------------------------
# The answer-only loss


def test_answer_targets_ignore_everything_before_y():
    data = make_task("reversal", 4, 8, train_size=5, test_size=1)
    targets = answer_targets(data.train, data.x_len)
    assert targets.shape == (5, data.seq_len - 1)
    assert (targets[:, : data.x_len + 1] == IGNORE_INDEX).all()  # X tokens and SEP are never targets
    assert torch.equal(targets[:, data.x_len + 1 :], data.answers(data.train))


def test_answer_loss_depends_only_on_y_targets():
    """With the logits fixed, changing BOS, X or SEP in the target sequences leaves the loss unchanged to the bit;
    changing one Y token changes it; the value is the mean cross-entropy over the Y positions."""
    data = make_task("inversion", 5, 8, train_size=16, test_size=1)
    seqs = data.train
    logits = torch.randn(seqs.shape[0], seqs.shape[1] - 1, data.model_vocab_size)
    loss = answer_loss(logits, seqs, data.x_len)

    scrambled = seqs.clone()
    scrambled[:, : data.x_len + 2] = torch.randint(0, data.model_vocab_size, (seqs.shape[0], data.x_len + 2))
    assert torch.equal(answer_loss(logits, scrambled, data.x_len), loss)

    changed_y = seqs.clone()
    changed_y[3, -1] = (changed_y[3, -1] + 1) % data.vocab
    assert not torch.equal(answer_loss(logits, changed_y, data.x_len), loss)

    y_logits = logits[:, data.x_len + 1 :].reshape(-1, data.model_vocab_size)
    expected = F.cross_entropy(y_logits, data.answers(seqs).reshape(-1))
    torch.testing.assert_close(loss, expected)


# --------------------------------------------------------------------------------------------------------------------
# Training runs

# Reversal at L=6 over 4 symbols (4**6 = 4096 inputs): small enough to learn in seconds, and with so many repeated
# symbols that copying by content fails: the model has to learn positions.
FAST_REVERSAL = dict(
    task="reversal",
    length=6,
    vocab=4,
    train_size=1200,
    val_size=300,
    test_size=500,
    steps=1500,
    batch_size=64,
    lr=3e-3,
    eval_every=50,
    d_model=32,
    num_layers=2,
    num_heads=4,
)


def test_short_reversal_run_reaches_full_held_out_accuracy(one_thread):
    """Reversal at L=6, V=4 on the CPU: greedy exact match 1.000 on training data and on 500 never-seen inputs."""
    result = run_probe(ProbeConfig(**FAST_REVERSAL))
    assert result.train_exact_match == 1.0
    assert result.val_exact_match == 1.0
    assert result.test_exact_match == 1.0
    assert result.test_per_position == [1.0] * 6
    assert result.stopped_early and result.steps < FAST_REVERSAL["steps"]
    assert result.final_loss < 0.05
    assert result.split_sizes == {"train": 1200, "val": 300, "test": 500}


def test_untrained_probe_reports_low_accuracy_and_is_deterministic(one_thread):
    """A few steps leave held-out accuracy near chance; the same config gives the same numbers twice."""
    config = ProbeConfig(**(FAST_REVERSAL | dict(steps=3, train_size=100, val_size=0, test_size=100)))
    first, second = run_probe(config), run_probe(config)
    assert first.test_exact_match < 0.1 and first.steps == 3 and not first.stopped_early
    assert first.test_per_position == second.test_per_position and first.final_loss == second.final_loss


def test_probe_rejects_a_context_too_short_for_the_task():
    config = ProbeConfig(**(FAST_REVERSAL | dict(context_length=8)))
    with pytest.raises(ValueError, match="context_length=8 is too short for task='reversal' at length=6"):
        run_probe(config)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (dict(steps=0), "steps=0 must be a positive integer"),
        (dict(lr=0.0), "lr=0.0 must be a positive finite number"),
        (dict(stop_after=0), "stop_after=0 must be a positive integer"),
        (dict(min_lr_ratio=2.0), "min_lr_ratio=2.0 must be in \\[0, 1\\]"),
        (dict(norm="sandwich"), "norm='sandwich' must be one of"),
    ],
)
def test_probe_rejects_bad_config(override, match):
    with pytest.raises(ValueError, match=match):
        run_probe(ProbeConfig(**(FAST_REVERSAL | override)))


def test_format_table_has_one_row_per_result(one_thread):
    config = ProbeConfig(**(FAST_REVERSAL | dict(steps=2, train_size=40, val_size=0, test_size=20)))
    results = [run_probe(c) for c in probes.sweep_configs(config, lengths=[3, 4])[:3]]
    table = format_table(results).splitlines()
    assert len(table) == 2 + 3 and table[0].split()[:4] == ["task", "L", "positions", "norm"]
    assert table[2].split()[:4] == ["reversal", "3", "rope", "pre"] and table[4].split()[3] == "none"


def test_sweep_covers_positions_and_norms_for_each_length():
    configs = probes.sweep_configs(ProbeConfig(), lengths=[5, 9])
    assert [(c.length, c.positions, c.norm) for c in configs[:6]] == [
        (5, p, n) for p in ("rope", "none") for n in ("pre", "post", "none")
    ]
    assert len(configs) == 12 and {c.length for c in configs[6:]} == {9}


# --------------------------------------------------------------------------------------------------------------------
# Output and CLI

TINY_CLI = ["--length", "4", "--vocab", "6", "--train-size", "40", "--val-size", "0", "--test-size", "20"]
TINY_CLI += ["--steps", "2", "--d-model", "16", "--num-heads", "2"]


def test_atomic_write_json_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert list(tmp_path.iterdir()) == []
    atomic_write_json(target, {"ok": 1})
    assert json.loads(target.read_text()) == {"ok": 1} and list(tmp_path.iterdir()) == [target]


def test_cli_probe_writes_json(tmp_path, capsys, one_thread):
    out = tmp_path / "result.json"
    assert main(["probe", "add", *TINY_CLI, "--length", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["task"] == "add" and result["config"]["length"] == 2
    assert result["steps"] == 2 and len(result["test_per_position"]) == 3  # L+1 digits for add
    assert set(result) >= {"train_exact_match", "test_exact_match", "train_per_position", "wall_seconds"}
    assert "probe add: L=2" in capsys.readouterr().out


def test_cli_sweep_prints_a_table_and_writes_every_run(tmp_path, capsys, one_thread):
    out = tmp_path / "sweep.json"
    assert main(["probe", "copy", *TINY_CLI, "--sweep", "--sweep-lengths", "3,4", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())
    assert len(runs) == 12
    assert {(r["config"]["length"], r["config"]["positions"], r["config"]["norm"]) for r in runs} == {
        (length, p, n) for length in (3, 4) for p in ("rope", "none") for n in ("pre", "post", "none")
    }
    printed = capsys.readouterr().out
    assert "task" in printed and printed.count("\ncopy ") == 12


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["probe", "mirror"], "task='mirror' is not a probe task; choose one of reversal"),
        (["probe", "reversal", "--context-length", "10"], "context_length=10 is too short"),
        (["probe", "reversal", "--length", "40", "--context-length", "64"], "context_length=64 is too short"),
        (["probe", "reversal", "--length", "3", "--vocab", "4"], "only vocab\\*\\*3 = 64 exist"),
        (["probe", "shift", "--length", "5", "--shift", "5"], "shift=5 must be in \\[1, length-1\\]"),
        (["probe", "reversal", "--threads", "-1"], "--threads=-1 must be >= 0"),
        (["probe", "reversal", "--sweep-lengths", "5,9"], "--sweep-lengths needs --sweep"),
        (["probe", "reversal", "--sweep", "--sweep-lengths", "5,x"], "--sweep-lengths='5,x' must be comma-separated"),
        (["probe", "reversal", "--sweep", "--sweep-lengths", "5,0"], "each >= 1"),
        (["probe", "reversal", "--json", "/nonexistent-dir/x.json"], "directory '/nonexistent-dir' does not exist"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(argv, match, capsys):
    """Bad input fails fast (before any training) with exit code 2 and a message naming the argument."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cs336-basics probe: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(match, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_rejects_cuda_without_cuda(capsys):
    assert main(["probe", "reversal", "--device", "cuda"]) == 2
    assert "device='cuda' is not available: this machine has 0 CUDA device(s)" in capsys.readouterr().err


def test_cli_sweep_checks_every_length_before_training(capsys):
    """A sweep whose second length is impossible fails before the first run starts."""
    assert main(["probe", "reversal", "--vocab", "4", "--sweep", "--sweep-lengths", "9,3"]) == 2
    assert "only vocab**3 = 64 exist" in capsys.readouterr().err


def test_make_task_refuses_held_out_inputs_that_occur_in_training(monkeypatch):
    """The disjointness check is real: a sampler that repeats a training input in the test split is caught."""
    monkeypatch.setattr(
        probe_tasks, "_sample_distinct", lambda rng, n, width, vocab: np.zeros((n, width), dtype=np.int64)
    )
    with pytest.raises(RuntimeError, match="of the 3 test inputs also occur in the training split"):
        make_task("copy", 4, 8, train_size=5, test_size=3)


def test_cli_without_validation_split_reports_no_val_accuracy(tmp_path, capsys, one_thread):
    """--val-size 0: early stopping looks at train only, and the JSON says null (valid JSON), not NaN."""
    out = tmp_path / "r.json"
    assert main(["probe", "reversal", *TINY_CLI, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["val_exact_match"] is None and "NaN" not in out.read_text()
    assert "val -" in capsys.readouterr().out
