"""Atomic writes keep the permissions a plain write would give: 0o666 less the umask for a new file (not the
temporary file's private 0600), an existing file's own mode when it is replaced; and so do the files a run, a
checkpoint and `prepare` write through them."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from cs336_basics import fileio
from cs336_basics.commands.train_bpe import write_tokenizer_dir
from cs336_basics.fileio import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    current_umask,
    write_dir_atomically,
)
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.optimizer import AdamW
from cs336_basics.serialization import load_checkpoint, save_checkpoint
from cs336_basics.train import train
from cs336_basics.train_config import TrainConfig
from cs336_basics.workflows.prepare import prepare

from ._tiny_run import TINY_RUN, toy_ids, write_tokens


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    """The process umask set for one test and restored after it."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> str:
    """The permission bits in octal ("0o644"), so a failure reads as modes."""
    return oct(stat.S_IMODE(path.stat().st_mode))


def modes(root: Path) -> dict[str, str]:
    """{relative path: permission bits} of every file and directory under `root`."""
    return {str(p.relative_to(root)): mode(p) for p in sorted(root.rglob("*"))}


def test_current_umask_with_and_without_proc(tmp_path, umask, monkeypatch):
    """Read from /proc where Linux has it; elsewhere set and restored, leaving the umask as it was."""
    assert current_umask() == umask
    monkeypatch.setattr(fileio, "_PROC_STATUS", str(tmp_path / "missing"))
    assert current_umask() == umask
    assert os.umask(umask) == umask  # (unchanged by the read)


WRITERS = {
    "bytes": lambda path: atomic_write_bytes(path, lambda f: f.write(b"\x00\x01")),
    "text": lambda path: atomic_write_text(path, "hello\n"),
    "json": lambda path: atomic_write_json(path, {"a": 1}),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_atomic_writers_give_a_plain_writes_permissions(tmp_path, umask, writer):
    assert current_umask() == umask
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    WRITERS[writer](tmp_path / "sub" / "atomic")
    assert mode(tmp_path / "sub" / "atomic") == mode(plain) == oct(0o666 & ~umask)
    assert mode(tmp_path / "sub") == oct(0o777 & ~umask)  # (the directory it made, as mkdir makes it)
    assert os.listdir(tmp_path / "sub") == ["atomic"]  # no temporary file left


@pytest.mark.parametrize("writer", WRITERS)
def test_replacing_a_file_keeps_its_mode(tmp_path, umask, writer):
    """As `open(path, "w")` would: a file the user made group-writable, or private, stays so."""
    for wanted in (0o660, 0o600, 0o644):
        path = tmp_path / f"existing-{wanted:o}"
        path.write_bytes(b"old")
        path.chmod(wanted)
        WRITERS[writer](path)
        assert mode(path) == oct(wanted) and path.read_bytes() != b"old"


def test_write_dir_atomically_gives_a_plain_directory_and_files(tmp_path, umask):
    def fill(tmp: Path) -> None:
        atomic_write_text(tmp / "a.txt", "a")
        (tmp / "b.bin").write_bytes(b"b")

    out = write_dir_atomically(tmp_path / "out", fill)
    assert modes(out) == {"a.txt": oct(0o666 & ~umask), "b.bin": oct(0o666 & ~umask)}
    assert mode(out) == oct(0o777 & ~umask)


def test_train_bpes_directory_is_a_plain_directory(tmp_path, umask):
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab"}
    write_tokenizer_dir(vocab, [(b"a", b"b")], ["<|endoftext|>"], tmp_path / "tok")
    assert mode(tmp_path / "tok") == oct(0o777 & ~umask)
    assert set(modes(tmp_path / "tok").values()) == {oct(0o666 & ~umask)}


def test_checkpoints_are_0644_under_umask_022(tmp_path, umask_022):
    model = TransformerLM(ModelConfig(vocab_size=11, context_length=4, d_model=8, num_layers=1, num_heads=2))
    optimizer = AdamW(model.parameters())
    for name in ("ckpt.pt", "ckpt.safetensors"):
        save_checkpoint(model, optimizer, 3, tmp_path / name)
        assert mode(tmp_path / name) == "0o644"
        assert load_checkpoint(tmp_path / name, model) == 3


def test_a_runs_files_are_0644_under_umask_022(tmp_path, umask_022):
    """config.json, log.jsonl, summary.json, loss.png and every checkpoint of a run: readable by the group and others,
    as the token files beside them are."""
    rng = np.random.default_rng(0)
    train_file = write_tokens(tmp_path / "train.bin", toy_ids(3000, rng))
    val_file = write_tokens(tmp_path / "val.bin", toy_ids(800, rng))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = dict(TINY_RUN, steps=4, plot=True, device="cpu", train=str(train_file), val=str(val_file))
        train(TrainConfig(**config, out=str(tmp_path / "run")))
    finally:
        torch.set_num_threads(threads)
    found = modes(tmp_path / "run")
    assert {"config.json", "log.jsonl", "summary.json", "loss.png"} <= set(found)
    assert any(name.endswith(".pt") for name in found)
    assert found == {name: "0o755" if (tmp_path / "run" / name).is_dir() else "0o644" for name in found}


def test_prepares_outputs_are_0644_under_umask_022(tmp_path, umask_022):
    source = tmp_path / "corpus.txt"
    source.write_bytes(b"".join(b"the cat sat on a mat number %d.\n<|endoftext|>\n" % i for i in range(200)))
    prepare(str(source), tmp_path / "data", vocab_size=270, valid_fraction=0.1)
    found = modes(tmp_path / "data")
    assert {"manifest.json", "train.txt", "valid.txt", "train.bin", "valid.bin", "tokenizer/vocab.json"} <= set(found)
    assert found == {name: "0o755" if (tmp_path / "data" / name).is_dir() else "0o644" for name in found}
