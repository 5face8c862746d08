"""`compare`: one figure line per run, a table whose numbers are the logs' and whose extra columns are exactly the
settings that differ; sweep directories count as their runs; diverged runs marked."""

import csv
import io
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from cs336_basics import cli
from cs336_basics.train import train
from cs336_basics.train_config import TrainConfig
from cs336_basics.workflows.compare import (
    TABLE_COLUMNS,
    collect_runs,
    compare,
    comparison_rows,
    format_csv,
    summarize,
)
from cs336_basics.workflows.sweep import parse_axes, run_sweep

from ._tiny_run import TINY_RUN, toy_ids, write_tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_toy_tokens(path: Path, n: int, seed: int) -> str:
    return str(write_tokens(path, toy_ids(n, np.random.default_rng(seed))))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A sweep over lr (one diverging) and a standalone run with a different width: three tiny runs (~1 s)."""
    root = tmp_path_factory.mktemp("compare")
    base = dict(
        TINY_RUN,
        train=write_toy_tokens(root / "train.bin", 6000, 0),
        val=write_toy_tokens(root / "val.bin", 1500, 1),
        eval_interval=4,
        log_interval=2,
        checkpoint_interval=0,
        device="cpu",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (module-scoped: set up before the one_torch_thread fixture)
    try:
        run_sweep(base, parse_axes(["lr=3e-3,1e30"]), [], root / "sweep")
        train(TrainConfig(**{**base, "d_model": 16, "out": str(root / "narrow")}))
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "sweep": root / "sweep", "narrow": root / "narrow"}


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_compare_writes_a_figure_line_per_run_and_a_table_equal_to_the_logs(runs, tmp_path):
    report = compare([runs["sweep"], runs["narrow"]], tmp_path / "report", x="tokens", show_train=True)
    assert Path(report["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["labels"] == ["lr=0.003", "lr=1e+30 (train) (diverged)", "narrow"]
    # the settings that differ, and nothing else (train/val/out etc. are equal or not settings)
    assert report["columns"] == [*TABLE_COLUMNS, "d_model", "lr"]

    with open(report["csv"]) as f:
        table = {row["run"]: row for row in csv.DictReader(f)}
    assert list(table) == ["lr=0.003", "lr=1e+30", "narrow"]
    for name, run_dir in (("lr=0.003", runs["sweep"] / "lr=0.003"), ("narrow", runs["narrow"])):
        log, row = read_log(run_dir), table[name]
        val = [r["val_loss"] for r in log if "val_loss" in r]
        assert row["status"] == "finished"
        assert float(row["final_val_loss"]) == val[-1] and float(row["best_val_loss"]) == min(val)
        assert int(row["steps"]) == log[-1]["step"] == 12 and int(row["tokens"]) == log[-1]["tokens"]
        assert float(row["wall_clock_s"]) == log[-1]["wall_clock_s"]
        assert float(row["tokens_per_s"]) == statistics.median(r["tokens_per_s"] for r in log if "tokens_per_s" in r)
        assert row["mfu"] == ""  # not a known GPU
    assert table["lr=1e+30"]["status"] == "diverged" and table["lr=1e+30"]["final_val_loss"] == ""
    assert (table["narrow"]["d_model"], table["lr=0.003"]["d_model"], table["lr=1e+30"]["lr"]) == ("16", "32", "1e+30")

    markdown = Path(report["markdown"]).read_text().splitlines()
    assert markdown[0].startswith("| run | status | final_val_loss |") and len(markdown) == 2 + 3
    assert f"| {float(table['narrow']['final_val_loss']):.4f} |" in markdown[4]


def test_status_from_the_log_without_a_sweep(runs, tmp_path):
    """A run whose log holds a NaN is diverged; one without summary.json is incomplete."""
    run_dir = tmp_path / "nan"
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_text('{"step": 1, "tokens": 8, "train_loss": 3.0}\n{"step": 2, "train_loss": NaN}\n')
    [run] = collect_runs([run_dir])
    assert run.status == "diverged"
    assert collect_runs([runs["narrow"]])[0].status == "finished"
    (run_dir / "log.jsonl").write_text('{"step": 1, "tokens": 8, "train_loss": 3.0}\n')
    assert collect_runs([run_dir])[0].status == "incomplete"
    assert math.isnan(json.loads("NaN"))


def test_final_and_best_validation_loss_differ_when_the_loss_rises(tmp_path):
    run_dir = tmp_path / "rising"
    run_dir.mkdir()
    records = [
        {"step": 10, "tokens": 80, "train_loss": 3.1, "tokens_per_s": 100.0, "wall_clock_s": 1.0, "val_loss": 3.0},
        {"step": 20, "tokens": 160, "train_loss": 2.6, "tokens_per_s": 300.0, "wall_clock_s": 2.0, "val_loss": 2.5},
        {"step": 30, "tokens": 240, "train_loss": 2.8, "tokens_per_s": 200.0, "wall_clock_s": 3.5, "val_loss": 2.7},
    ]
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    row = summarize(collect_runs([run_dir])[0])
    assert (row["final_val_loss"], row["best_val_loss"], row["tokens_per_s"]) == (2.7, 2.5, 200.0)
    assert (row["steps"], row["tokens"], row["wall_clock_s"], row["mfu"]) == (30, 240, 3.5, None)


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("losses", [[NAN, 3, 2.5], [3, NAN, 2.5], [3, 2.5, NAN], [INF, 2.5, 3], [NAN, 2.5, INF]])
def test_a_nan_or_inf_evaluation_never_becomes_the_best_loss(tmp_path, losses):
    """The best validation loss is the lowest finite one, wherever the NaN falls (min() keeps a leading NaN); a run
    with no finite evaluation has none."""
    for name, values in (("run", losses), ("all_nan", [NAN, NAN])):
        (tmp_path / name).mkdir()
        records = [{"step": 10 * (i + 1), "train_loss": 3.0, "val_loss": v} for i, v in enumerate(values)]
        (tmp_path / name / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    columns, rows = comparison_rows(collect_runs([tmp_path / "run", tmp_path / "all_nan"]))  # (compare's table)
    assert {row["run"]: row["best_val_loss"] for row in rows} == {"run": 2.5, "all_nan": None}
    table = csv.DictReader(io.StringIO(format_csv(columns, rows)))
    assert {row["run"]: row["best_val_loss"] for row in table} == {"run": "2.5", "all_nan": ""}
    final = rows[0]["final_val_loss"]
    assert final == losses[-1] or math.isnan(final) and math.isnan(losses[-1])


def test_clashing_run_names_get_their_parent_and_bad_inputs_are_clear(runs, tmp_path):
    other = tmp_path / "copy"
    (other / "narrow").mkdir(parents=True)
    (other / "narrow" / "log.jsonl").write_bytes((runs["narrow"] / "log.jsonl").read_bytes())
    names = [r.name for r in collect_runs([runs["narrow"], other])]
    assert names == [f"{runs['root'].name}/narrow", "copy/narrow"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compare([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no log.jsonl and no run directories"):
        compare([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(ValueError, match="x='epochs' must be one of"):
        compare([runs["narrow"]], tmp_path / "out", x="epochs")


def test_cli_compare(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["compare", str(runs["sweep"]), "--x", "time", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| lr=0.003 | finished |" in printed and "loss.png" in printed
    assert {p.name for p in out.iterdir()} == {"loss.png", "table.md", "table.csv"}
