"""The README's front door: its library example runs as written, and its commands name real subcommands and flags."""

import re
import shlex
from pathlib import Path

import pytest

from cs336_basics.bpe import train_bpe
from cs336_basics.cli import SUBCOMMAND_MODULES, build_parser
from cs336_basics.tokenizer_files import save_tokenizer

README = Path(__file__).resolve().parents[1] / "README.md"
FIXTURE_CORPUS = Path(__file__).parent / "fixtures" / "bpe" / "corpus.txt"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_library_example_runs(tmp_path, monkeypatch):
    """The one Python block that builds a model: run it with its tokenizer path pointed at a tokenizer made here."""
    (example,) = [b for b in _blocks("python") if "TransformerLM" in b]
    vocab, merges = train_bpe(FIXTURE_CORPUS, 300, ["<|endoftext|>"], num_workers=1)
    save_tokenizer(vocab, merges, tmp_path / "data" / "ts" / "tokenizer", ["<|endoftext|>"])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert namespace["ids"][-1] == 0  # <|endoftext|> is the special token with id 0
    assert namespace["loss"].item() > 0


def _readme_commands() -> list[list[str]]:
    """Every `cs336-basics SUBCOMMAND ...` invocation in the README's bash blocks (continuation lines joined)."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0]
            if "cs336-basics " in line:
                commands.append(shlex.split(line.split("cs336-basics ", 1)[1]))
    return commands


def test_readme_commands_parse():
    """Each command in the README parses with the real CLI: a renamed flag or subcommand fails here."""
    commands = _readme_commands()
    assert len(commands) >= 6
    for argv in commands:
        assert argv[0] in SUBCOMMAND_MODULES, argv
        try:
            build_parser(argv[0]).parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"README command does not parse: cs336-basics {shlex.join(argv)} (exit {e.code})")


def test_readme_command_table_lists_every_subcommand():
    text = README.read_text(encoding="utf-8")
    table = [line for line in text.splitlines() if line.startswith("| `")]
    listed = {line.split("`")[1].split()[0] for line in table}
    assert set(SUBCOMMAND_MODULES) <= listed, set(SUBCOMMAND_MODULES) - listed
