"""Checkpoints: round trips through paths and file objects, wrapper prefixes, atomic writes, bad files."""

import io
import os
import pickle

import pytest
import torch

from cs336_basics import serialization
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.optimizer import AdamW
from cs336_basics.serialization import load_checkpoint, read_checkpoint, save_checkpoint

from . import adapters

CONFIG = ModelConfig(vocab_size=31, context_length=8, d_model=16, num_layers=2, num_heads=2, d_ff=32)


def trained_model_and_optimizer(steps: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = TransformerLM(CONFIG)
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        ids = torch.randint(0, 31, (2, 8))
        optimizer.zero_grad()
        model(ids).logsumexp(-1).mean().backward()
        optimizer.step()
    return model, optimizer


def fresh_model_and_optimizer(seed: int = 1):
    torch.manual_seed(seed)
    model = TransformerLM(CONFIG)
    return model, AdamW(model.parameters(), lr=0.5)


def assert_same_training_state(model_a, opt_a, model_b, opt_b):
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    sd_a, sd_b = opt_a.state_dict(), opt_b.state_dict()
    assert sd_a["param_groups"] == sd_b["param_groups"]
    for pid, st_a in sd_a["state"].items():
        assert st_a["step"] == sd_b["state"][pid]["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(st_a[key], sd_b["state"][pid][key])


@pytest.mark.parametrize("as_str", [True, False])
def test_checkpoint_round_trip_through_a_path(tmp_path, as_str):
    model, optimizer = trained_model_and_optimizer()
    path = tmp_path / "nested" / "ckpt.pt"
    adapters.run_save_checkpoint(model=model, optimizer=optimizer, iteration=123, out=str(path) if as_str else path)
    assert path.is_file()
    new_model, new_optimizer = fresh_model_and_optimizer()
    iteration = adapters.run_load_checkpoint(
        src=str(path) if as_str else path, model=new_model, optimizer=new_optimizer
    )
    assert iteration == 123 and isinstance(iteration, int)
    assert_same_training_state(model, optimizer, new_model, new_optimizer)


def test_checkpoint_round_trip_through_a_file_object():
    model, optimizer = trained_model_and_optimizer()
    buffer = io.BytesIO()
    adapters.run_save_checkpoint(model=model, optimizer=optimizer, iteration=7, out=buffer)
    buffer.seek(0)
    new_model, new_optimizer = fresh_model_and_optimizer()
    assert adapters.run_load_checkpoint(src=buffer, model=new_model, optimizer=new_optimizer) == 7
    assert_same_training_state(model, optimizer, new_model, new_optimizer)


@pytest.mark.parametrize("name", ["ckpt.safetensors", "ckpt.pt", "ckpt", "ckpt.bin", "ckpt.json", "ckpt.pth", "c.tar"])
@pytest.mark.parametrize("as_str", [True, False])
def test_checkpoint_round_trips_under_any_file_name(tmp_path, name, as_str):
    """load_checkpoint reads what save_checkpoint wrote whatever the name: torch.load, given a path, reads a
    `.safetensors` name as a safetensors file, though the file is torch's format."""
    model, optimizer = trained_model_and_optimizer(steps=1)
    path = str(tmp_path / name) if as_str else tmp_path / name
    adapters.run_save_checkpoint(model=model, optimizer=optimizer, iteration=5, out=path)
    assert os.listdir(tmp_path) == [name]
    new_model, new_optimizer = fresh_model_and_optimizer()
    assert adapters.run_load_checkpoint(src=path, model=new_model, optimizer=new_optimizer) == 5
    assert_same_training_state(model, optimizer, new_model, new_optimizer)
    assert read_checkpoint(path)["iteration"] == 5


@pytest.mark.parametrize("name", ["ckpt.safetensors", "ckpt.pt"])
def test_checkpoint_round_trip_through_an_open_file(tmp_path, name):
    """A binary file object the caller opened (the adapters' other target), under a `.safetensors` name too."""
    model, optimizer = trained_model_and_optimizer(steps=1)
    with open(tmp_path / name, "wb") as f:
        adapters.run_save_checkpoint(model=model, optimizer=optimizer, iteration=8, out=f)
    new_model, new_optimizer = fresh_model_and_optimizer()
    with open(tmp_path / name, "rb") as f:
        assert adapters.run_load_checkpoint(src=f, model=new_model, optimizer=new_optimizer) == 8
    assert_same_training_state(model, optimizer, new_model, new_optimizer)


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    model, optimizer = trained_model_and_optimizer(steps=2)
    save_checkpoint(model, optimizer, 2, tmp_path / "ckpt.pt")
    resumed_model, resumed_opt = fresh_model_and_optimizer()
    load_checkpoint(tmp_path / "ckpt.pt", resumed_model, resumed_opt)
    ids = torch.randint(0, 31, (2, 8))
    for m, o in ((model, optimizer), (resumed_model, resumed_opt)):
        o.zero_grad()
        m(ids).logsumexp(-1).mean().backward()
        o.step()
    assert_same_training_state(model, optimizer, resumed_model, resumed_opt)


def test_checkpoint_stores_format_config_and_extra(tmp_path):
    model, optimizer = trained_model_and_optimizer(steps=1)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, optimizer, 5, path, config=CONFIG.to_dict(), extra={"tokens_seen": 1024})
    payload = read_checkpoint(path)
    assert payload["format_version"] == serialization.FORMAT_VERSION
    assert payload["config"] == CONFIG.to_dict() and payload["tokens_seen"] == 1024
    assert TransformerLM(ModelConfig(**payload["config"])).load_state_dict(payload["model"])
    with pytest.raises(ValueError, match="extra key 'model' would overwrite a checkpoint field"):
        save_checkpoint(model, optimizer, 5, tmp_path / "other.pt", extra={"model": 1})
    assert not (tmp_path / "other.pt").exists()


class CompiledLike(torch.nn.Module):
    """What torch.compile returns, minus the compiling: the model under `_orig_mod`, so keys read `_orig_mod.*`.

    (torch.compile itself costs ~10 s of import on this CPU; the GPU suite exercises it.)
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self._orig_mod = model


def test_checkpoint_of_a_compiled_model_has_no_orig_mod_prefix(tmp_path):
    """A compiled (wrapped) model's keys are `_orig_mod.*`; checkpoints store and accept the plain names."""
    model, optimizer = trained_model_and_optimizer(steps=1)
    wrapped = CompiledLike(model)
    assert all(k.startswith("_orig_mod.") for k in wrapped.state_dict())
    path = tmp_path / "ckpt.pt"
    save_checkpoint(wrapped, optimizer, 1, path)
    assert set(read_checkpoint(path)["model"]) == set(model.state_dict())
    target, target_opt = fresh_model_and_optimizer()
    load_checkpoint(path, CompiledLike(target), target_opt)  # loading into a wrapped model works too
    assert_same_training_state(model, optimizer, target, target_opt)


def test_load_strips_orig_mod_prefix_from_a_hand_built_checkpoint(tmp_path):
    model, optimizer = trained_model_and_optimizer(steps=1)
    prefixed = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "prefixed.pt"
    torch.save({"model": prefixed, "optimizer": optimizer.state_dict(), "iteration": 9}, path)
    target, target_opt = fresh_model_and_optimizer()
    assert load_checkpoint(path, target, target_opt) == 9
    assert_same_training_state(model, optimizer, target, target_opt)


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A crash in the middle of torch.save leaves the old file intact and no temporary file behind."""
    model, optimizer = trained_model_and_optimizer(steps=1)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, optimizer, 1, path)
    old_bytes = path.read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"partial checkpoint bytes" * 100)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, optimizer, 2, path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert read_checkpoint(path)["iteration"] == 1


def test_keyboard_interrupt_mid_write_leaves_no_new_file(tmp_path, monkeypatch):
    model, optimizer = trained_model_and_optimizer(steps=1)

    def interrupted_save(obj, f, *args, **kwargs):
        f.write(b"x" * 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, optimizer, 2, tmp_path / "ckpt.pt")
    assert os.listdir(tmp_path) == []


def test_checkpoint_missing_keys_is_an_error(tmp_path):
    model, optimizer = trained_model_and_optimizer(steps=1)
    path = tmp_path / "partial.pt"
    torch.save({"model": model.state_dict(), "iteration": 3}, path)
    with pytest.raises(ValueError, match=r"is missing keys \['optimizer'\]"):
        adapters.run_load_checkpoint(src=path, model=model, optimizer=optimizer)


def test_checkpoint_that_is_not_a_dict_is_an_error(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    model, optimizer = fresh_model_and_optimizer()
    with pytest.raises(ValueError, match="holds a list, not a checkpoint dict"):
        load_checkpoint(path, model, optimizer)


def test_missing_checkpoint_file_is_file_not_found(tmp_path):
    model, optimizer = fresh_model_and_optimizer()
    with pytest.raises(FileNotFoundError, match="missing.pt' does not exist"):
        load_checkpoint(tmp_path / "missing.pt", model, optimizer)


class _Arbitrary:  # not a tensor, dict or primitive: weights_only loading must refuse it
    pass


def test_checkpoints_load_with_weights_only(tmp_path):
    model, optimizer = trained_model_and_optimizer(steps=1)
    path = tmp_path / "unsafe.pt"
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": 1, "x": _Arbitrary()}, path
    )
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path, model, optimizer)


def test_checkpoint_with_wrong_model_shape_fails_loudly(tmp_path):
    model, optimizer = trained_model_and_optimizer(steps=1)
    save_checkpoint(model, optimizer, 1, tmp_path / "ckpt.pt")
    other = TransformerLM(ModelConfig(vocab_size=31, context_length=8, d_model=32, num_layers=2, num_heads=2))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_checkpoint(tmp_path / "ckpt.pt", other)
