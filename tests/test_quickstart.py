"""The quickstart pipeline end to end (tiny settings), its built-in corpus and its document split."""

import json
from pathlib import Path

import pytest

from cs336_basics import cli
from cs336_basics.checkpoints import load_model
from cs336_basics.data import load_tokens
from cs336_basics.generation import generate_text
from cs336_basics.tokenizer import Tokenizer
from cs336_basics.workflows.eval import evaluate_tokens
from cs336_basics.workflows.quickstart import EOT, builtin_corpus, run_quickstart, split_documents

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_builtin_corpus_is_deterministic_simple_english():
    text = builtin_corpus(50, seed=3)
    assert text == builtin_corpus(50, seed=3) != builtin_corpus(50, seed=4)
    assert text.count(EOT) == 50
    assert text.isascii() and " a old " not in text
    with pytest.raises(ValueError, match="num_stories=0 must be positive"):
        builtin_corpus(0)


def test_split_documents_keeps_whole_documents():
    text = "".join(f"story {i}\n{EOT}\n" for i in range(10))
    train, val = split_documents(text, 0.2)
    assert train + val == text
    assert val == f"story 8\n{EOT}\nstory 9\n{EOT}\n"
    assert split_documents("a\nb\nc\nd\n", 0.25) == ("a\nb\nc\n", "d\n")  # no separators: by lines
    with pytest.raises(ValueError, match=r"val_fraction=1.0 must be in \(0, 1\)"):
        split_documents(text, 1.0)


def test_quickstart_runs_the_whole_pipeline(tmp_path):
    """BPE -> tokenize -> train (stopped at step 3, resumed to 6) -> eval -> sample, all into `out`."""
    out = tmp_path / "qs"
    lines = []
    result = run_quickstart(
        out,
        vocab_size=300,
        steps=6,
        batch_size=2,
        context_length=16,
        d_model=16,
        num_layers=1,
        num_heads=2,
        d_ff=32,
        eval_interval=3,
        max_new_tokens=40,
        num_stories=120,
        device="cpu",
        log=lines.append,
    )
    assert len(lines) == 7 and lines[-1].startswith("[6/6] sample")
    for name in ("corpus.txt", "train.txt", "val.txt", "train.bin", "val.bin", "tokenizer/vocab.json"):
        assert (out / name).is_file(), name
    log = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "train_loss" in r] == [1, 2, 3, 4, 5, 6]
    assert result["train"]["step"] == 6 and result["eval"]["tokens"] == result["tokens"]["val"] - 1
    # The evaluation and the sample are those of the final checkpoint, with the sampling settings asked for
    # (temperature 0.8, top-p 0.95, seed 0): a sample from the halfway checkpoint or at another temperature differs.
    model = load_model(result["train"]["checkpoint"])
    assert result["train"]["checkpoint"].endswith("ckpt_000006.pt")
    evaluation = evaluate_tokens(model, load_tokens(out / "val.bin"))
    assert result["eval"]["loss"] == pytest.approx(evaluation["loss"], rel=1e-6)
    tokenizer = Tokenizer.from_dir(out / "tokenizer")
    continuation = generate_text(model, tokenizer, "once upon a time", 40, temperature=0.8, top_p=0.95, seed=0)
    assert result["sample"] == "once upon a time" + continuation
    assert json.loads((out / "quickstart.json").read_text())["sample"] == result["sample"]


def test_quickstart_refuses_bad_settings_before_any_work(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep me")
    assert cli.main(["quickstart", "--out", str(busy)]) == 2
    assert "is not empty" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert cli.main(["quickstart", "--out", str(fresh), "--top-p", "0"]) == 2
    assert "top_p=0.0 must be in (0, 1]" in capsys.readouterr().err
    assert cli.main(["quickstart", "--out", str(fresh), "--device", "tpu"]) == 2
    assert cli.main(["quickstart", "--out", str(fresh), "--text", str(tmp_path / "none.txt")]) == 2
    assert "none.txt' does not exist" in capsys.readouterr().err
    assert not Path(fresh).exists()
