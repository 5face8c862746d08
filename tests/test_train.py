"""The trainer: it learns, resumes to the bit, survives a crash mid-checkpoint, schedules the LR as specified,
matches DDP with a single process, and rejects every bad setting before doing any work."""

import importlib.util
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cs336_basics import cli
from cs336_basics.checkpoints import list_checkpoints, load_model
from cs336_basics.nn_utils import cross_entropy
from cs336_basics.optimizer import get_lr_cosine_schedule
from cs336_basics.train import NonFiniteLossError, train
from cs336_basics.train_config import TrainConfig
from cs336_basics.workflows.eval import evaluate_tokens
from cs336_basics.workflows.throughput import measure_throughput

from ._tiny_run import TINY_RUN, toy_ids, write_tokens
from .conftest import project_fixture

REPO = Path(__file__).resolve().parents[1]
# benchmarks/gpu_check.sh sets CS336_TEST_DEVICE=cuda; the forked DDP and crash tests always use the CPU.
DEVICE = os.environ.get("CS336_TEST_DEVICE", "cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def token_files(tmp_path):
    """A learnable toy language: mostly-periodic ids with a little noise (vocab 40)."""
    rng = np.random.default_rng(0)

    def make(name, n):
        return write_tokens(tmp_path / f"{name}.bin", toy_ids(n, rng))

    return make("train", 6000), make("val", 1500)


def tiny_config(tmp_path, token_files, **overrides) -> TrainConfig:
    train_path, val_path = token_files
    values = dict(
        TINY_RUN,
        train=str(train_path),
        val=str(val_path),
        out=str(tmp_path / "run"),
        device=DEVICE,
        deterministic=DEVICE != "cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def train_losses(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in read_log(run_dir) if "train_loss" in r]


def test_overfits_a_single_batch(tmp_path):
    """With one possible window, every batch is the same: the loss falls near zero."""
    ids = np.random.default_rng(1).integers(0, 40, 17)
    train_file = write_tokens(tmp_path / "one.bin", ids)
    config = tiny_config(
        tmp_path, (train_file, train_file), steps=80, lr=1e-2, warmup_steps=5, log_interval=1, eval_interval=0
    )
    summary = train(config)
    assert summary["train_loss"] < 0.05
    assert summary["val_loss"] < 0.05
    assert read_log(config.out)[0]["train_loss"] > 3.0  # it started near log(40) = 3.7


# The modern recipe (docs/recipe.md): Muon for the hidden matrices, every model switch, the wsd schedule.
MODERN = dict(
    optimizer="muon", qk_norm=True, ffn="relu2", logit_softcap=15.0, zero_init_proj=True, schedule="wsd", muon_lr=0.02
)


def optimizer_states(payload: dict) -> list[dict]:
    """The per-parameter states of a checkpoint's optimizer: AdamW's, or each of Muon + AdamW's."""
    opt = payload["optimizer"]
    return [o["state"] for o in opt["optimizers"]] if "optimizers" in opt else [opt["state"]]


@pytest.mark.parametrize("recipe", [{}, MODERN], ids=["adamw", "modern"])
def test_stop_and_resume_equals_uninterrupted_run_bitwise(tmp_path, token_files, recipe):
    """Stopped at step 6 (between checkpoints) and resumed: the same losses, bit for bit, and the same weights
    and optimizer state (AdamW's, or Muon's momentum and AdamW's)."""
    overrides = dict(grad_accum_steps=2, checkpoint_interval=4, keep_checkpoints=2, **recipe)
    full = train(tiny_config(tmp_path / "a", token_files, **overrides))
    part = train(tiny_config(tmp_path / "b", token_files, stop_at_step=6, **overrides))
    assert part["stopped_early"] and part["step"] == 6
    # A fresh invocation that only knows the run directory, as after a preemption.
    resumed = train(tiny_config(tmp_path / "b", token_files, resume=True, **overrides))
    assert resumed["step"] == full["step"] == 12
    assert train_losses(tmp_path / "b" / "run") == train_losses(tmp_path / "a" / "run")
    vals = [[r.get("val_loss") for r in read_log(d / "run")] for d in (tmp_path / "a", tmp_path / "b")]
    assert vals[0] == vals[1]
    a = torch.load(full["checkpoint"], weights_only=True)
    b = torch.load(resumed["checkpoint"], weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "run")] == [8, 12]  # keep_checkpoints=2
    # Every counter continues: each log record but the timings equals the uninterrupted run's, the token count
    # included; so do the summary's and checkpoint's counters, AdamW's step, and wall-clock keeps growing.
    timings = ("tokens_per_s", "wall_clock_s", "mfu")
    records = [
        [{k: v for k, v in r.items() if k not in timings} for r in read_log(d / "run")]
        for d in (tmp_path / "a", tmp_path / "b")
    ]
    assert records[0] == records[1]
    assert resumed["tokens"] == full["tokens"] == 12 * 2 * 4 * 16
    assert b["tokens"] == a["tokens"] and b["iteration"] == a["iteration"] == 12
    assert {s["step"] for s in optimizer_states(b)[-1].values()} == {12}  # AdamW's (for Muon: the rest's)
    for state_a, state_b in zip(optimizer_states(a), optimizer_states(b), strict=True):
        assert state_a.keys() == state_b.keys()
        for i in state_a:
            for name, value in state_a[i].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b[i][name])), (i, name)
    if recipe:
        assert len(optimizer_states(b)) == 2 and "momentum_buffer" in next(iter(optimizer_states(b)[0].values()))
    clock = [r["wall_clock_s"] for r in read_log(tmp_path / "b" / "run")]
    assert clock == sorted(clock) and b["wall_clock_s"] >= clock[-1]


def test_resume_from_cli_with_only_out(tmp_path, token_files, capsys):
    """`train --out RUN --resume` takes every other setting from the run's config.json."""
    config = tiny_config(tmp_path, token_files, stop_at_step=4)
    assert train(config)["step"] == 4
    assert cli.main(["train", "--out", config.out, "--resume", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 12
    assert [s for s, _ in train_losses(config.out)] == list(range(1, 13))


def test_checkpoint_killed_mid_write_leaves_previous_intact(tmp_path, token_files):
    """A process SIGKILLed while writing ckpt 4 leaves ckpt 2 loadable and no ckpt 4; resume then works."""
    config = tiny_config(tmp_path, token_files, checkpoint_interval=2, steps=6, device="cpu")
    # A forked child (no re-import) trains and is SIGKILLed halfway through writing its second checkpoint.
    child = _mp_context().Process(target=_train_and_die_in_second_save, args=(config,))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    run_dir = Path(config.out)
    assert [s for s, _ in list_checkpoints(run_dir)] == [2]
    assert list(run_dir.glob(".ckpt_000004.pt.*.tmp"))  # the half-written temporary file, never renamed
    payload = torch.load(run_dir / "ckpt_000002.pt", weights_only=True)
    assert payload["iteration"] == 2
    summary = train(tiny_config(tmp_path, token_files, checkpoint_interval=2, steps=6, resume=True, device="cpu"))
    assert summary["step"] == 6
    assert not list(run_dir.glob(".ckpt_*.tmp"))


def _train_and_die_in_second_save(config: TrainConfig) -> None:
    import cs336_basics.serialization as serialization

    real_save, calls = torch.save, [0]

    def dying_save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            f.write(b"x" * 1000)  # part of a checkpoint ...
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # ... and the process is gone, as under a preemption
        real_save(obj, f, *args, **kwargs)

    serialization.torch.save = dying_save
    train(config)


def test_trainer_lr_is_the_cosine_schedule(tmp_path, token_files):
    """The LR logged (and applied) at step s is get_lr_cosine_schedule(s, ...) for every step."""
    config = tiny_config(tmp_path, token_files, steps=20, warmup_steps=4, cosine_steps=15, min_lr=1e-4)
    train(config)
    records = [r for r in read_log(config.out) if "lr" in r]
    assert [r["step"] for r in records] == list(range(1, 21))
    for r in records:
        assert r["lr"] == get_lr_cosine_schedule(r["step"], 3e-3, 1e-4, 4, 15)
    meta = json.loads((Path(config.out) / "config.json").read_text())
    assert meta["schedule"] == dict(
        max_learning_rate=3e-3, min_learning_rate=1e-4, warmup_iters=4, cosine_cycle_iters=15
    )


def test_run_directory_contents(tmp_path, token_files):
    """config.json (+ git SHA, command line), log.jsonl fields, loss.png, and the final evaluation."""
    config = tiny_config(tmp_path, token_files, plot=True, max_tokens=700, steps=None)
    summary = train(config)
    run_dir = Path(config.out)
    assert summary["step"] == 11  # ceil(700 / (4 * 16))
    meta = json.loads((run_dir / "config.json").read_text())
    assert {"git_sha", "command_line", "train_config", "model_config", "torch_version"} <= set(meta)
    log = read_log(run_dir)
    assert {"step", "tokens", "lr", "train_loss", "grad_norm", "tokens_per_s", "wall_clock_s"} <= set(log[0])
    assert log[-1]["step"] == 11 and "val_loss" in log[-1] and log[-1]["val_loss"] == summary["val_loss"]
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = load_model(summary["checkpoint"])
    assert model.config.vocab_size == 40
    assert not list(run_dir.glob("*.tmp"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, token_files, monkeypatch):
    """A loss that turns NaN at step 6 raises a clear error; ckpt 4 (finite) is the newest checkpoint."""
    import cs336_basics.train as train_module

    calls = [0]

    def poisoned(logits, targets):
        calls[0] += 1
        loss = cross_entropy(logits, targets)
        return loss * float("nan") if calls[0] == 6 else loss

    monkeypatch.setattr(train_module, "cross_entropy", poisoned)
    config = tiny_config(tmp_path, token_files, log_interval=5, eval_interval=0)
    with pytest.raises(NonFiniteLossError, match=r"NaN or inf at step 6.*ckpt_000004\.pt \(step 4\)"):
        train(config)
    assert [s for s, _ in list_checkpoints(config.out)] == [4]
    weights = torch.load(Path(config.out) / "ckpt_000004.pt", weights_only=True)["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_config_file_and_flag_precedence(tmp_path, token_files, capsys):
    """--config TOML supplies settings; a flag given on the command line wins over it."""
    config = tiny_config(tmp_path, token_files)
    toml = tmp_path / "run.toml"
    lines = [f"{k} = {json.dumps(v)}" for k, v in config.__dict__.items() if v is not None and k != "out"]
    toml.write_text("\n".join(lines) + "\n")
    out = tmp_path / "cli_run"
    assert cli.main(["train", "--config", str(toml), "--out", str(out), "--steps", "2", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("d_modle = 3\n")
    assert cli.main(["train", "--config", str(bad), "--out", str(out)]) == 2
    assert "unknown key 'd_modle'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(device="tpu"), "device='tpu'"),
        (dict(device="cuda:7"), "device='cuda:7'"),
        (dict(vocab_size=30), "token id 3[6-9], which is >= vocab_size=30"),
        (dict(context_length=7000, eval_batches=1), "needs 7001"),
        (dict(steps=None), "exactly one of steps"),
        (dict(dtype="float16"), "dtype='float16'"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(beta2=1.0), "beta2=1.0"),
        (dict(d_model=30), "divisible by num_heads"),
        (dict(optimizer="sgd"), "optimizer='sgd' must be one of"),
        (dict(schedule="linear"), "schedule='linear' must be one of"),
        (dict(schedule="wsd", decay_frac=0.9), r"warmup_steps=3 plus the decay \(decay_frac=0.9 of 12 steps\)"),
        (dict(decay_frac=-0.1), "decay_frac=-0.1 must be in"),
        (dict(max_time="90"), "max_time='90' must be a duration"),
        (dict(max_time="-5m"), "max_time='-5m' must be a duration"),
        (dict(max_time="1.5x"), "max_time='1.5x' must be a duration"),
        (dict(muon_momentum=1.0), "muon_momentum=1.0 must be in"),
        (dict(muon_adjust_lr="rms"), "muon_adjust_lr='rms' must be one of"),
        (dict(logit_softcap=-3.0), "logit_softcap=-3.0 must be a number > 0"),
    ],
)
def test_bad_settings_fail_before_any_work(tmp_path, token_files, overrides, match):
    """Each bad setting raises ValueError naming it, and nothing is written."""
    config = tiny_config(tmp_path, token_files, **overrides)
    with pytest.raises(ValueError, match=match):
        train(config)
    assert not Path(config.out).exists()


def test_missing_and_malformed_token_files(tmp_path, token_files):
    config = tiny_config(tmp_path, token_files, train=str(tmp_path / "nope.bin"))
    with pytest.raises(FileNotFoundError, match="nope.bin' does not exist"):
        train(config)
    bare = tmp_path / "bare.bin"
    np.zeros(100, np.uint16).tofile(bare)
    with pytest.raises(FileNotFoundError, match="no sidecar bare.bin.json"):
        train(tiny_config(tmp_path, token_files, val=str(bare)))
    stale = write_tokens(tmp_path / "stale.bin", np.zeros(100, np.uint16))
    stale.with_name("stale.bin.json").write_text(json.dumps({"dtype": "uint16", "num_tokens": 99}))
    with pytest.raises(ValueError, match="truncated or stale"):
        train(tiny_config(tmp_path, token_files, val=str(stale)))
    assert not Path(config.out).exists()


def test_existing_run_needs_resume(tmp_path, token_files):
    config = tiny_config(tmp_path, token_files, steps=2)
    train(config)
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(config)


def test_cli_bad_flags_are_one_line_errors(tmp_path, token_files, capsys):
    train_path, val_path = token_files
    base = ["train", "--train", str(train_path), "--val", str(val_path), "--out", str(tmp_path / "r")]
    base += ["--vocab-size", "40", "--context-length", "16", "--d-model", "32", "--num-heads", "4", "--steps", "1"]
    assert cli.main([*base, "--device", "quantum"]) == 2
    assert "device='quantum'" in capsys.readouterr().err
    assert cli.main([*base, "--vocab-size", "20"]) == 2
    assert ">= vocab_size=20" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_wandb_missing_is_a_clear_error(tmp_path, token_files, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ValueError, match="needs the wandb package"):
        train(tiny_config(tmp_path, token_files, wandb=True))


def test_eval_matches_windowed_reference(tmp_path, token_files, capsys):
    """evaluate_tokens scores every id but the first exactly once, in context-length windows."""
    config = tiny_config(tmp_path, token_files, steps=3)
    summary = train(config)
    model = load_model(summary["checkpoint"])
    data = np.fromfile(token_files[1], dtype=np.uint16)[:100]
    result = evaluate_tokens(model, data, context_length=16, batch_size=3)
    assert result["tokens"] == 99
    ids = torch.from_numpy(data.astype(np.int64))
    total = 0.0
    with torch.no_grad():
        for s in range(0, 99, 16):
            window = ids[s : min(s + 17, 100)][None]
            total += float(cross_entropy(model(window[:, :-1]), window[:, 1:])) * (window.shape[1] - 1)
    assert result["loss"] == pytest.approx(total / 99, rel=1e-6)
    assert cli.main(["eval", "--checkpoint", summary["checkpoint"], "--data", str(token_files[1])]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tokens"] == 1499 and printed["perplexity"] == pytest.approx(np.exp(printed["loss"]))
    too_long = ["eval", "--checkpoint", summary["checkpoint"], "--data", str(token_files[1]), "--context-length", "17"]
    assert cli.main(too_long) == 2
    assert "--context-length=17 must be in [1, 16]" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(token_files[1])]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_measure_throughput_runs(tmp_path, token_files):
    result = measure_throughput(tiny_config(tmp_path, token_files), warmup_steps=1, seconds=0.2)
    assert result["tokens_per_s"] > 0 and result["steps"] >= 5
    assert (result["mfu"] is None) == (DEVICE == "cpu")
    assert not Path(tmp_path / "run").exists()


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _ddp_worker(rank: int, world_size: int, port: int, config: TrainConfig) -> None:
    # What torchrun sets for each process.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        train(config)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _mp_context():
    """fork (fast: no re-import) unless this process has used CUDA: autograd's device threads cannot survive a fork
    (as after CS336_TEST_DEVICE=cuda tests on a GPU box), so then spawn. CS336_TEST_MP_START forces a method."""
    method = os.environ.get("CS336_TEST_MP_START") or ("spawn" if torch.cuda.is_initialized() else "fork")
    return multiprocessing.get_context(method)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("recipe", [{}, MODERN], ids=["adamw", "modern"])
def test_ddp_gloo_two_ranks_equal_single_process_with_doubled_batch(tmp_path, token_files, recipe):
    """2 forked ranks (gloo), batch 4 per rank, grad accumulation 2 == one process with batch 8: same losses
    (with AdamW, and with Muon + AdamW, whose every rank orthogonalizes the same all-reduced gradient)."""
    kw = dict(steps=5, eval_interval=5, grad_accum_steps=2, checkpoint_interval=0, device="cpu", deterministic=False)
    kw |= recipe
    single = train(tiny_config(tmp_path / "single", token_files, batch_size=8, **kw))
    ddp_config = tiny_config(tmp_path / "ddp", token_files, batch_size=4, **kw)
    ctx = _mp_context()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(rank, 2, port, ddp_config)) for rank in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    ddp_losses, single_losses = train_losses(ddp_config.out), train_losses(tmp_path / "single" / "run")
    assert [s for s, _ in ddp_losses] == [s for s, _ in single_losses] == [1, 2, 3, 4, 5]
    # Same batches; only the order of float additions differs (two half-batch gradients averaged).
    np.testing.assert_allclose([v for _, v in ddp_losses], [v for _, v in single_losses], rtol=1e-5)
    ddp_summary = json.loads((Path(ddp_config.out) / "summary.json").read_text())
    assert ddp_summary["tokens"] == single["tokens"]
    assert ddp_summary["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)
    a = torch.load(single["checkpoint"], weights_only=True)["model"]
    b = torch.load(ddp_summary["checkpoint"], weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torchrun_two_processes_equal_single_process_with_doubled_batch(tmp_path, token_files):
    """torchrun, 2 CPU processes (gloo), batch 4 per rank == one process with batch 8: same losses and weights."""
    config = tiny_config(tmp_path / "single", token_files, batch_size=8, steps=6, eval_interval=3, device="cpu")
    single = train(config)
    train_path, val_path = token_files
    out = tmp_path / "ddp" / "run"
    flags = ["--train", str(train_path), "--val", str(val_path), "--out", str(out), "--vocab-size", "40"]
    flags += ["--context-length", "16", "--d-model", "32", "--d-ff", "64", "--num-layers", "2", "--num-heads", "4"]
    flags += ["--batch-size", "4", "--steps", "6", "--lr", "3e-3", "--warmup-steps", "3", "--eval-interval", "3"]
    flags += ["--eval-batches", "2", "--log-interval", "1", "--checkpoint-interval", "4", "--device", "cpu"]
    flags += ["--no-progress", "--no-plot"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "cs336_basics.cli", "train", *flags]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_losses = train_losses(out)
    single_losses = train_losses(config.out)
    assert [s for s, _ in ddp_losses] == [s for s, _ in single_losses]
    # Same batches; only the order of float additions differs (two half-batch gradients averaged).
    np.testing.assert_allclose([v for _, v in ddp_losses], [v for _, v in single_losses], rtol=1e-5)
    a = torch.load(single["checkpoint"], weights_only=True)["model"]
    b = torch.load(out / "ckpt_000006.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    meta = json.loads((out / "config.json").read_text())
    assert meta["world_size"] == 2


def test_sidecar_vocab_size_is_checked_without_a_scan(tmp_path, token_files):
    """A sidecar whose tokenizer vocab exceeds the model's still gets the id scan (and passes when ids fit)."""
    from cs336_basics.data import check_token_file

    path = write_tokens(tmp_path / "t.bin", np.arange(50) % 40)
    meta = json.loads(path.with_name("t.bin.json").read_text())
    path.with_name("t.bin.json").write_text(json.dumps(meta | {"vocab_size": 1000}))
    assert check_token_file(path, 40, 16) == 50  # scanned: max id 39 < 40
    with pytest.raises(ValueError, match="token id 39, which is >= vocab_size=39"):
        check_token_file(path, 39, 16)
    path.with_name("t.bin.json").write_text(json.dumps(meta | {"vocab_size": 30}))
    assert check_token_file(path, 30, 16) == 50  # trusted: the tokenizer's ids are all < 30


def test_init_from_starts_a_fresh_run_from_the_weights(tmp_path, token_files):
    """--init-from a run directory (its newest checkpoint) or a file: the weights come over, the step, token count
    and optimizer start from zero. With lr 0 the new run's weights stay exactly the source's."""
    source = train(tiny_config(tmp_path / "a", token_files, steps=8))
    for init_from in (str(tmp_path / "a" / "run"), source["checkpoint"]):
        out = tmp_path / f"b{len(init_from)}"
        config = tiny_config(out, token_files, steps=3, lr=0.0, min_lr=0.0, init_from=init_from)
        summary = train(config)
        assert summary["step"] == 3 and summary["tokens"] == 3 * config.tokens_per_step()
        assert [s for s, _ in train_losses(config.out)] == [1, 2, 3]
        a = torch.load(source["checkpoint"], weights_only=True)
        b = torch.load(summary["checkpoint"], weights_only=True)
        assert b["iteration"] == 3
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), key
        assert {s["step"] for s in b["optimizer"]["state"].values()} == {3}  # fresh AdamW: 3 steps, not 8 + 3
        meta = json.loads((Path(config.out) / "config.json").read_text())
        assert meta["init_from_checkpoint"] == source["checkpoint"]
    # From scratch the first loss is near log(40) = 3.7; from the trained weights it starts far lower.
    assert train_losses(config.out)[0][1] < read_log(tmp_path / "a" / "run")[0]["train_loss"] - 0.5


def test_init_from_errors_name_the_problem(tmp_path, token_files, capsys):
    source = train(tiny_config(tmp_path / "a", token_files, steps=2))
    with pytest.raises(ValueError, match=r"d_model=64 \(checkpoint: 32\)"):
        train(tiny_config(tmp_path / "b", token_files, d_model=64, init_from=source["checkpoint"]))
    with pytest.raises(ValueError, match=r"num_layers=3 \(checkpoint: 2\).*norm='post' \(checkpoint: 'pre'\)"):
        train(tiny_config(tmp_path / "b", token_files, num_layers=3, norm="post", init_from=source["checkpoint"]))
    assert not (tmp_path / "b" / "run").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no ckpt_"):
        train(tiny_config(tmp_path / "b", token_files, init_from=str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match="nope.pt. does not exist"):
        train(tiny_config(tmp_path / "b", token_files, init_from=str(tmp_path / "nope.pt")))
    # attention_backend is how the model computes, not what it is: it may differ.
    sdpa = tiny_config(tmp_path / "c", token_files, steps=1, attention_backend="sdpa", init_from=source["checkpoint"])
    assert train(sdpa)["step"] == 1


def test_init_from_cli_takes_the_model_settings_from_the_checkpoint(tmp_path, token_files, capsys):
    source = train(tiny_config(tmp_path / "a", token_files, steps=2))
    train_path, val_path = token_files
    base = ["train", "--train", str(train_path), "--val", str(val_path), "--steps", "2", "--batch-size", "4"]
    base += ["--eval-batches", "1", "--no-progress", "--no-plot"]
    out = tmp_path / "b"
    assert cli.main([*base, "--out", str(out), "--init-from", str(tmp_path / "a" / "run")]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
    assert json.loads((out / "config.json").read_text())["model_config"]["d_model"] == 32
    assert cli.main([*base, "--out", str(tmp_path / "c"), "--init-from", source["checkpoint"], "--d-model", "64"]) == 2
    assert "d_model=64 (checkpoint: 32)" in capsys.readouterr().err


def test_grad_accumulation_equals_one_step_of_the_whole_batch(tmp_path, token_files):
    """k micro-batches of B/k (grad_accum_steps=k) draw the same windows as one batch of B and must give the same
    mean loss, the same gradient norm (logged before clipping) and the same weights, up to float rounding. A
    missing 1/k doubles the logged norm (AdamW alone would hide it: it is scale-invariant)."""
    common = dict(steps=4, log_interval=1, eval_interval=0, grad_clip=0.0)
    whole = train(tiny_config(tmp_path / "whole", token_files, batch_size=8, grad_accum_steps=1, **common))
    accum = train(tiny_config(tmp_path / "accum", token_files, batch_size=2, grad_accum_steps=4, **common))
    assert whole["tokens"] == accum["tokens"]
    logs = [read_log(tmp_path / name / "run") for name in ("whole", "accum")]
    for one, many in zip(*logs, strict=True):
        assert many["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
        assert many["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
    a = torch.load(whole["checkpoint"], weights_only=True)["model"]
    b = torch.load(accum["checkpoint"], weights_only=True)["model"]
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=1e-4, atol=1e-5)


def test_tiny_run_reproduces_the_recorded_reference(tmp_path):
    """The trainer's numbers for a tiny seeded CPU run (batches, schedule, accumulation, clipping, evaluation)
    equal tests/fixtures/trainer/tiny_run.json, written by make_tiny_run.py beside it (relative 1e-4: BLAS
    builds may round differently)."""
    reference = json.loads(project_fixture("trainer", "tiny_run.json").read_text())
    spec = importlib.util.spec_from_file_location("make_tiny_run", project_fixture("trainer", "make_tiny_run.py"))
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    assert maker.SETTINGS == reference["settings"]
    records = maker.tiny_run(tmp_path)
    assert [sorted(r) for r in records] == [sorted(r) for r in reference["records"]]
    for got, want in zip(records, reference["records"], strict=True):
        assert got == pytest.approx(want, rel=1e-4), want["step"]


def test_train_flags_are_the_config_fields_with_the_dataclass_defaults():
    """One flag per TrainConfig field (old spellings kept), its help showing the field's own default; flags not
    typed stay out of the namespace so that --config and a resumed run's settings can supply them."""
    import argparse
    import dataclasses

    parser = cli.build_parser("train")
    train_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    by_dest = {a.dest: a for a in train_parser._actions}
    for field in dataclasses.fields(TrainConfig):
        action = by_dest[field.name]
        if field.default not in (None, dataclasses.MISSING) and not isinstance(field.default, bool):
            assert f"default {field.default}" in action.help, field.name
    assert by_dest["progress"].option_strings == ["--no-progress"] and by_dest["plot"].option_strings == ["--no-plot"]
    args = parser.parse_args(["train", "--d-model", "64", "--no-plot", "--norm", "post"])
    given = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}
    assert given == {"d_model": 64, "plot": False, "norm": "post"}
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--norm", "sandwich"])


# --------------------------------------------------------------------------------------------------------------------
# The modern recipe in the trainer: Muon's parameter split, the wsd schedule, the time budget


def test_muon_gets_the_hidden_matrices_and_adamw_the_rest(tmp_path, token_files):
    from cs336_basics.model import ModelConfig, TransformerLM
    from cs336_basics.train import split_muon_parameters

    for tie in (False, True):
        model = TransformerLM(ModelConfig(vocab_size=40, context_length=16, d_model=32, num_layers=2, num_heads=4,
                                          qk_norm=True, tie_embeddings=tie))  # fmt: skip
        hidden, rest = split_muon_parameters(model)
        names = {id(p): n for n, p in model.named_parameters()}
        matrices = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.output_proj", "ffn.w1", "ffn.w2", "ffn.w3"]
        assert sorted(names[id(p)].split(".", 2)[2] for p in hidden) == sorted(f"{m}.weight" for m in matrices * 2)
        rest_names = {names[id(p)] for p in rest}
        assert "token_embeddings.weight" in rest_names and "ln_final.weight" in rest_names
        assert ("lm_head.weight" in rest_names) != tie  # a tied matrix is listed once, under its first name
        assert "layers.0.attn.q_norm.weight" in rest_names
        assert len(hidden) + len(rest) == len(list(model.parameters()))


def test_trainer_applies_each_group_its_schedule(tmp_path, token_files):
    """schedule=wsd: the LR logged at step s is get_lr_wsd_schedule(s, ...); Muon's group follows the same shape
    from --muon-lr, to the same fraction of it as min-lr is of lr."""
    import cs336_basics.train as train_module
    from cs336_basics.optimizer import get_lr_wsd_schedule

    seen = []
    real_step = train_module.MultiOptimizer.step

    def spy(self, closure=None):
        seen.append([g["lr"] for g in self.param_groups])
        return real_step(self, closure)

    config = tiny_config(tmp_path, token_files, steps=20, warmup_steps=4, min_lr=3e-4, schedule="wsd",
                         decay_frac=0.25, optimizer="muon", muon_lr=0.02)  # fmt: skip
    train_module.MultiOptimizer.step = spy
    try:
        train(config)
    finally:
        train_module.MultiOptimizer.step = real_step
    records = [r for r in read_log(config.out) if "lr" in r]
    for r in records:
        assert r["lr"] == get_lr_wsd_schedule(r["step"], 3e-3, 3e-4, 4, 20, 0.25)
    for step, (muon_lr, adamw_lr) in enumerate(seen, start=1):
        assert adamw_lr == get_lr_wsd_schedule(step, 3e-3, 3e-4, 4, 20, 0.25)
        assert muon_lr == pytest.approx(get_lr_wsd_schedule(step, 0.02, 0.002, 4, 20, 0.25))
    meta = json.loads((Path(config.out) / "config.json").read_text())
    assert meta["lr_schedule"] == "wsd" and meta["schedule"]["decay_frac"] == 0.25


def test_max_time_stops_with_final_eval_and_checkpoint_and_counts_across_resumes(tmp_path, token_files, monkeypatch):
    """A 1-second budget on a run of a million steps: it stops after about 1 s of training with a final
    evaluation and checkpoint; evaluation time (made slow here) is not counted; a resume with a 2 s budget trains
    about 1 s more, not 2."""
    import time

    import cs336_basics.train as train_module

    real_evaluate, evals = train_module.Run.evaluate, [0]

    def slow_evaluate(self):
        evals[0] += 1
        time.sleep(0.3)
        return real_evaluate(self)

    monkeypatch.setattr(train_module.Run, "evaluate", slow_evaluate)
    config = tiny_config(tmp_path, token_files, steps=10**6, eval_interval=3, checkpoint_interval=0, max_time="1s")
    first = train(config)
    assert first["stopped_by"] == "max_time" and not first["stopped_early"]
    assert 1.0 <= first["train_time_s"] < 5.0 and first["max_time_s"] == 1.0
    assert first["wall_clock_s"] - first["train_time_s"] >= 0.3 * evals[0] > 0  # evaluations not counted
    last = read_log(config.out)[-1]
    assert last["step"] == first["step"] and last["stopped_by"] == "max_time" and "val_loss" in last
    assert [s for s, _ in list_checkpoints(config.out)] == [first["step"]]
    assert json.loads((Path(config.out) / "config.json").read_text())["max_time_s"] == 1.0
    second = train(tiny_config(tmp_path, token_files, steps=10**6, eval_interval=3, checkpoint_interval=0,
                               max_time="2s", resume=True))  # fmt: skip
    assert second["stopped_by"] == "max_time" and second["step"] > first["step"]
    assert 2.0 <= second["train_time_s"] < 2.0 + (first["train_time_s"] - 1.0) + 4.0
    assert second["tokens_per_s"] is not None


def test_modern_run_saves_its_model_switches_and_reloads(tmp_path, token_files):
    summary = train(tiny_config(tmp_path, token_files, steps=5, **MODERN))
    model = load_model(summary["checkpoint"])
    assert (model.config.qk_norm, model.config.ffn, model.config.logit_softcap, model.config.zero_init_proj) == (
        True, "relu2", 15.0, True,
    )  # fmt: skip
    assert "layers.0.attn.q_norm.weight" in model.state_dict() and "layers.0.ffn.w3.weight" not in model.state_dict()
    assert json.loads((Path(summary["run_dir"]) / "config.json").read_text())["model_config"] == model.config.to_dict()


def test_ddp_ranks_agree_when_the_time_budget_runs_out(tmp_path, token_files):
    """Two ranks whose clocks differ stop at the same step (a log step, where they agree by an all-reduce): no
    rank is left waiting in a collective."""
    config = tiny_config(tmp_path, token_files, steps=10**6, eval_interval=0, checkpoint_interval=0, max_time="1s",
                         log_interval=3, device="cpu", deterministic=False)  # fmt: skip
    ctx, port = _mp_context(), _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(rank, 2, port, config)) for rank in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    summary = json.loads((Path(config.out) / "summary.json").read_text())
    assert summary["stopped_by"] == "max_time" and summary["step"] % 3 == 0
