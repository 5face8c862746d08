"""`sweep`: grid and ablation points, one run directory each; diverged runs recorded and skipped over; a restart
skips finished runs and resumes interrupted ones; the CLI."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cs336_basics import cli
from cs336_basics.train import train
from cs336_basics.train_config import TrainConfig
from cs336_basics.workflows.sweep import expand_points, parse_axes, point_config, read_status, run_point, run_sweep

from ._tiny_run import TINY_RUN, toy_ids, write_tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_toy_tokens(path: Path, n: int, seed: int) -> Path:
    return write_tokens(path, toy_ids(n, np.random.default_rng(seed)))


@pytest.fixture
def base(tmp_path) -> dict:
    """Settings of a tiny model on a learnable toy language (vocab 40): a run takes ~0.2 s."""
    return dict(
        TINY_RUN,
        train=str(write_toy_tokens(tmp_path / "train.bin", 6000, 0)),
        val=str(write_toy_tokens(tmp_path / "val.bin", 1500, 1)),
        device="cpu",
    )


def test_parse_axes_types_values_and_aliases():
    axes = parse_axes(["learning_rate=1e-3,3e-3", "batch-size=64,1e2", "min_lr=none,1e-5", "tie_embeddings=true"])
    assert axes == [
        ("lr", [1e-3, 3e-3]),
        ("batch_size", [64, 100]),
        ("min_lr", [None, 1e-5]),
        ("tie_embeddings", [True]),
    ]
    assert isinstance(axes[1][1][0], int)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("lr", "must look like key=value"),
        ("lr=", "must look like key=value"),
        ("d_modle=32", "unknown setting 'd_modle'"),
        ("out=a,b", "managed by the sweep"),
        ("batch_size=sixty", "not a valid value"),
        ("lr=1e-3,0.001", "repeated"),
    ],
)
def test_parse_axes_rejects_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_axes([spec])


def test_parse_axes_rejects_a_key_given_twice():
    with pytest.raises(ValueError, match="given twice"):
        parse_axes(["lr=1e-3", "lr=3e-3"])


def test_points_are_the_grid_product_then_one_factor_ablations():
    grid = parse_axes(["lr=1e-3,3e-3", "batch_size=4,8"])
    names = [p.name for p in expand_points(grid, [], {})]
    assert names == ["lr=0.001,batch_size=4", "lr=0.001,batch_size=8", "lr=0.003,batch_size=4", "lr=0.003,batch_size=8"]
    ablations = parse_axes(["norm=none,post,pre", "ffn=silu"])
    points = expand_points([], ablations, {"norm": "pre"})
    # the base, then each ablation alone; norm=pre is the base's own setting, so it adds no point
    assert [p.name for p in points] == ["base", "norm=none", "norm=post", "ffn=silu"]
    assert points[1].settings() == {"norm": "none"}
    # ablations of a grid: each grid point with one factor changed
    points = expand_points(parse_axes(["lr=1e-3,3e-3"]), parse_axes(["ffn=silu"]), {})
    assert [p.name for p in points] == ["lr=0.001", "lr=0.003", "lr=0.001,ffn=silu", "lr=0.003,ffn=silu"]


def test_sweep_runs_grid_and_ablations_records_divergence_and_restart_skips(base, tmp_path):
    """A diverging lr is recorded as diverged and the others still run; a rerun trains nothing again."""
    events = []
    sweep_dir = tmp_path / "sweep"
    grid, ablations = parse_axes(["lr=3e-3,1e30"]), parse_axes(["ffn=silu"])
    results = run_sweep(base, grid, ablations, sweep_dir, on_event=lambda *e: events.append(e[:2]))
    assert {name: r["status"] for name, r in results.items()} == {
        "lr=0.003": "finished",
        "lr=1e+30": "diverged",
        "lr=0.003,ffn=silu": "finished",
        "lr=1e+30,ffn=silu": "diverged",
    }
    assert "NaN or inf" in results["lr=1e+30"]["error"]
    assert read_status(sweep_dir / "lr=1e+30")["status"] == "diverged"
    silu = json.loads((sweep_dir / "lr=0.003,ffn=silu" / "config.json").read_text())["train_config"]
    assert (silu["ffn"], silu["lr"], silu["d_model"]) == ("silu", 3e-3, 32)
    assert results["lr=0.003"]["summary"]["step"] == 12
    saved = json.loads((sweep_dir / "sweep.json").read_text())
    assert [p["name"] for p in saved["points"]] == list(results)

    log = sweep_dir / "lr=0.003" / "log.jsonl"
    before = log.stat().st_mtime_ns
    events.clear()
    again = run_sweep(base, grid, ablations, sweep_dir, on_event=lambda *e: events.append(e[:2]))
    assert [kind for kind, _ in events] == ["skip"] * 4
    assert {n: r["status"] for n, r in again.items()} == {n: r["status"] for n, r in results.items()}
    assert log.stat().st_mtime_ns == before


def test_an_interrupted_run_resumes_and_a_failed_one_is_retried(base, tmp_path):
    sweep_dir = tmp_path / "sweep"
    [point] = expand_points(parse_axes(["lr=3e-3"]), [], base)
    # the point's run was stopped at step 8 (as if killed after its checkpoint)
    train(TrainConfig(**{**vars(point_config(base, point, sweep_dir)), "stop_at_step": 8}))
    assert read_status(sweep_dir / point.name) is None
    results = run_sweep(base, parse_axes(["lr=3e-3"]), [], sweep_dir)
    assert results[point.name]["status"] == "finished"
    meta = json.loads((sweep_dir / point.name / "config.json").read_text())
    assert meta["resumed_from_step"] == 8
    assert [r["step"] for r in map(json.loads, (sweep_dir / point.name / "log.jsonl").open())][-1] == 12

    # a failed run (here: its token file vanished after validation) is recorded, then retried by a restart
    config = point_config(base, expand_points(parse_axes(["lr=1e-3"]), [], base)[0], sweep_dir)
    os.rename(base["train"], base["train"] + ".away")
    assert run_point(config)["status"] == "failed"
    os.rename(base["train"] + ".away", base["train"])
    assert run_sweep(base, parse_axes(["lr=1e-3"]), [], sweep_dir)["lr=0.001"]["status"] == "finished"


def test_a_sweep_dir_with_another_base_is_refused_and_bad_points_fail_before_any_run(base, tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_sweep({**base, "steps": 4, "checkpoint_interval": 0}, [], [], sweep_dir)
    with pytest.raises(ValueError, match=r"different base config \(differs in \['steps'\]\)"):
        run_sweep({**base, "steps": 5, "checkpoint_interval": 0}, [], [], sweep_dir)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        run_sweep(base, parse_axes(["d_model=32,30"]), [], tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_parallel_workers_one_per_device(base, tmp_path):
    """Two worker processes (spawned), each on its own device (here two CPU 'devices')."""
    results = run_sweep(base, parse_axes(["lr=3e-3,1e30"]), [], tmp_path / "sweep", devices=["cpu", "cpu"])
    assert {n: r["status"] for n, r in results.items()} == {"lr=0.003": "finished", "lr=1e+30": "diverged"}


def test_cli_sweep_with_set_and_dry_run(base, tmp_path, capsys):
    toml = tmp_path / "base.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in base.items() if k != "train"))
    out = tmp_path / "sweep"
    args = ["sweep", "--config", str(toml), "--set", f"train={base['train']}", "--out", str(out)]
    assert cli.main([*args, "--grid", "lr=3e-3", "--ablations", "positions=sinusoidal", "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == [
        f"{out}/lr=0.003",
        "to",
        "run",
        f"{out}/lr=0.003,positions=sinusoidal",
        "to",
        "run",
    ]
    assert cli.main([*args, "--grid", "lr=3e-3", "--ablations", "positions=sinusoidal"]) == 0
    assert "2 finished" in capsys.readouterr().out
    assert cli.main([*args, "--grid", "lr=3e-3,1e30"]) == 0  # a diverged run is a result, not a failure
    assert "already finished, skipped" in capsys.readouterr().out
    assert cli.main([*args, "--grid", "warmup=3"]) == 2
    assert "unknown setting 'warmup'" in capsys.readouterr().err
