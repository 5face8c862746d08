"""The command line: every `--help` is instant (no torch import), and each setting is defined once."""

import dataclasses
import subprocess
import sys

import pytest

from cs336_basics.cli import SUBCOMMAND_MODULES
from cs336_basics.config import FIELD_NAMES, HANDOUT_MODEL, ModelConfig
from cs336_basics.train_config import TrainConfig
from cs336_basics.workflows.probe_config import ProbeConfig

HELP_WITHOUT_TORCH = """
import sys
from cs336_basics import cli
try:
    cli.main(sys.argv[1:] + ["--help"])
except SystemExit as e:
    assert e.code == 0, e.code
heavy = sorted(m for m in ("torch", "numpy", "matplotlib", "transformers") if m in sys.modules)
print("imported:", heavy)
"""


@pytest.mark.parametrize("command", [None, *SUBCOMMAND_MODULES])
def test_help_imports_no_torch(command):
    """`cs336-basics --help` and `cs336-basics COMMAND --help` build their parser without importing torch (7 s cold
    before), so they answer at once."""
    argv = [sys.executable, "-c", HELP_WITHOUT_TORCH, *([command] if command else [])]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage: cs336-basics" in out.stdout
    assert out.stdout.strip().endswith("imported: []"), out.stdout[-300:]


def test_train_flags_are_the_model_settings():
    """TrainConfig names every ModelConfig field (norm_eps included) with ModelConfig's help, type and choices, and
    the handout's model as default: a setting added to ModelConfig cannot be forgotten by `train`."""
    train = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for f in dataclasses.fields(ModelConfig):
        assert f.name in train, f"TrainConfig lacks the model setting {f.name}"
        assert train[f.name].metadata["help"] == f.metadata["help"]
        assert train[f.name].type == f.type
        expected = HANDOUT_MODEL.get(f.name, f.default)
        assert train[f.name].default == expected, f.name
    assert TrainConfig(train="a", val="b", out="c").model_config() == ModelConfig(**HANDOUT_MODEL)


def test_probe_model_settings_come_from_model_config():
    probe = {f.name: f for f in dataclasses.fields(ProbeConfig)}
    shared = [name for name in FIELD_NAMES if name in probe and name != "context_length"]  # (the task's, by default)
    assert len(shared) >= 8
    for name in shared:
        model_field = next(f for f in dataclasses.fields(ModelConfig) if f.name == name)
        assert probe[name].metadata["help"] == model_field.metadata["help"]
        assert probe[name].type == model_field.type


@pytest.mark.parametrize("d_ff, expected", [(0, 1408), (None, 1408), (1344, 1344)])
def test_d_ff_zero_means_the_default_width(d_ff, expected):
    """The one rule for d_ff 0 (flags, TOML files, probe): the default width, 8/3 d_model rounded up to 64."""
    assert ModelConfig.from_settings({**HANDOUT_MODEL, "d_ff": d_ff, "lr": 1.0}).resolved_d_ff == expected
    assert TrainConfig(train="a", val="b", out="c", d_ff=d_ff).model_config().resolved_d_ff == expected


def test_model_config_names_a_bad_choice():
    with pytest.raises(ValueError, match=r"norm='sandwich' must be one of \('pre', 'post', 'none'\)"):
        ModelConfig(**HANDOUT_MODEL, norm="sandwich")
    with pytest.raises(ValueError, match="norm_eps=0.0 must be > 0"):
        ModelConfig(**HANDOUT_MODEL, norm_eps=0.0)
