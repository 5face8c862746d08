"""configs/*.toml: every recipe file parses into valid settings, the leaderboard config fails before any work
without its data (or its GPU), and a tiny CPU dry run of it honours its time budget."""

from pathlib import Path

import numpy as np
import pytest

from cs336_basics import cli
from cs336_basics.train import train
from cs336_basics.train_config import load_config_file, resolve_settings, validate_config

from ._tiny_run import write_tokens

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = ["handout.toml", "modern.toml", "leaderboard-owt.toml"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_parses_into_valid_settings(name, tmp_path):
    """Every key is a train setting, and every setting but the data files (absent here) validates."""
    values = load_config_file(CONFIGS / name)
    assert {"train", "val", "out", "vocab_size", "max_tokens"} <= set(values)
    config = resolve_settings({"out": str(tmp_path / "run"), "device": "cpu"}, config_file=CONFIGS / name)
    with pytest.raises(FileNotFoundError, match=values["train"]):  # the first missing input, named
        validate_config(config)
    assert not (tmp_path / "run").exists()


def test_modern_is_the_handout_plus_the_measured_switches():
    """modern.toml changes the handout's recipe only in the settings docs/recipe.md measured (and its run dir)."""
    handout, modern = load_config_file(CONFIGS / "handout.toml"), load_config_file(CONFIGS / "modern.toml")
    changed = {k for k in set(handout) | set(modern) if handout.get(k) != modern.get(k)}
    allowed = {"out", "optimizer", "qk_norm", "ffn", "d_ff", "logit_softcap", "zero_init_proj", "schedule"}
    allowed |= {"decay_frac", "muon_lr", "muon_adjust_lr", "muon_momentum", "lr", "min_lr", "warmup_steps"}
    assert changed <= allowed, changed - allowed
    assert modern["optimizer"] == "muon"


def test_leaderboard_config_is_the_leaderboard_setting():
    values = load_config_file(CONFIGS / "leaderboard-owt.toml")
    assert values["vocab_size"] == 32000 and values["context_length"] == 512
    assert values["dtype"] == "bfloat16" and values["compile"] is True and values["max_time"] == "90m"
    assert values["train"] == "data/owt/train.bin" and values["val"] == "data/owt/valid.bin"  # `prepare owt`


def test_leaderboard_config_from_cli_fails_before_any_work(tmp_path, capsys):
    """`train --config configs/leaderboard-owt.toml` on a machine without its data (and here without a GPU)
    stops with one clear line and writes nothing."""
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(CONFIGS / "leaderboard-owt.toml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "device='cuda'" in err or "data/owt/train.bin" in err
    assert not out.exists()


def test_leaderboard_config_tiny_cpu_dry_run_honours_the_time_budget(tmp_path):
    """The leaderboard file as it is, with the data, the model size and the device overridden to tiny ones (and
    compile off: compiling takes minutes on a CPU): a 2-second budget stops the 2-billion-token run with a final
    evaluation and checkpoint."""
    ids = np.random.default_rng(0).integers(0, 32000, 4000)
    train_file, val_file = write_tokens(tmp_path / "t.bin", ids), write_tokens(tmp_path / "v.bin", ids[:500])
    given = dict(
        train=str(train_file),
        val=str(val_file),
        out=str(tmp_path / "run"),
        device="cpu",
        compile=False,
        context_length=32,
        d_model=32,
        num_layers=2,
        num_heads=2,
        batch_size=2,
        grad_accum_steps=1,
        eval_batches=2,
        max_time="2s",
        progress=False,
    )
    config = resolve_settings(given, config_file=CONFIGS / "leaderboard-owt.toml")
    assert (config.optimizer, config.schedule, config.dtype, config.vocab_size) == ("muon", "cosine", "bfloat16", 32000)
    summary = train(config)
    assert summary["stopped_by"] == "max_time" and 2.0 <= summary["train_time_s"] < 30
    assert summary["step"] < summary["total_steps"] and np.isfinite(summary["val_loss"])
    assert Path(summary["checkpoint"]).is_file()
