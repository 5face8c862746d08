"""Data preparation in one restartable step: text (a local file, a URL or a named preset) -> BPE tokenizer -> tokens.

    cs336-basics prepare tinystories --out data/tinystories --workers 8
    cs336-basics prepare https://example.org/corpus.txt.gz --out data/corpus --vocab-size 8000
    cs336-basics prepare path/to/corpus.txt --out data/corpus --vocab-size 2000 --valid-fraction 0.05

Stages, in order (each one's outputs in DATA_DIR):
1. download (URL sources): `downloads/NAME` (a plain-text URL: `NAME` itself), through `NAME.part` with HTTP range
   requests, so an interrupted download continues where it stopped (also across runs); a cut connection is retried
   `DOWNLOAD_ATTEMPTS` times. The size is checked against the server's Content-Length / Content-Range and the
   expected size where one is known (presets), the sha256 where one is given.
2. decompress (`.gz`, `.zst` downloads): `NAME` without the suffix, streamed (constant memory).
3. split (no separate validation source): `train.txt`, `valid.txt`, the last `valid_fraction` of the text cut at a
   document boundary (after a special token, else after a newline).
4. bpe: `tokenizer/` (vocab.json, merges.txt, special_tokens.json), trained on the training text.
5. tokenize: `train.bin`, `valid.bin` (+ `.json` sidecars), with the parallel `tokenize_file`.

`manifest.json` records each finished stage: its parameters (source, sizes, vocab size, special tokens, and the
fingerprints of its inputs) and its outputs' sizes and fingerprints. A stage is skipped when the manifest holds it
with the same parameters and its outputs are still there, unchanged; so a restarted `prepare` continues after the
last finished stage, and changing e.g. the vocabulary size redoes only BPE and tokenization. Every output is written
to a temporary name and renamed when complete: an interrupted or failed stage leaves no partial output (only a
download's `.part`, which the next run resumes).
"""

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cs336_basics.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, write_dir_atomically
from cs336_basics.workflows.download import CHUNK, COMPRESSED_SUFFIXES, DownloadError, decompress, download

MANIFEST = "manifest.json"
FINGERPRINT_BYTES = 1 << 20  # a fingerprint reads the first and last MiB of a file (see `fingerprint`)


@dataclass(frozen=True)
class Remote:
    """A downloadable file: its URL, and what is known of it (None: unknown, checked against the server only)."""

    url: str
    download_bytes: int | None = None  # size of the file at the URL
    text_bytes: int | None = None  # size once decompressed (= download_bytes for plain text)
    sha256: str | None = None  # of the file at the URL


@dataclass(frozen=True)
class Preset:
    train: Remote
    valid: Remote
    vocab_size: int  # the CS336 handout's vocabulary size for this data set
    special_tokens: tuple[str, ...] = ("<|endoftext|>",)


# The CS336 Assignment 1 handout's data sets. Sizes as reported by several public copies of the files (not measured
# here: this project never downloads them in its tests); every download is also checked against the server's own
# Content-Length. No checksums are known, so none is checked.
_TS = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
_OWT = "https://huggingface.co/datasets/stanford-cs336/owt-sample/resolve/main/"
PRESETS: dict[str, Preset] = {
    "tinystories": Preset(
        train=Remote(_TS + "TinyStoriesV2-GPT4-train.txt", 2_227_753_162, 2_227_753_162),
        valid=Remote(_TS + "TinyStoriesV2-GPT4-valid.txt", 22_502_601, 22_502_601),
        vocab_size=10_000,
    ),
    "owt": Preset(
        train=Remote(_OWT + "owt_train.txt.gz", None, 11_920_511_059),
        valid=Remote(_OWT + "owt_valid.txt.gz", None, 289_998_753),
        vocab_size=32_000,
    ),
}


# --------------------------------------------------------------------------------------------------------------------
# Files: fingerprints and the manifest


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file's size, first MiB and last MiB: cheap on any size, and it changes when a file is truncated,
    extended or replaced (not a content hash: an edit in the middle of a large file goes unseen)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(f.read())
    return digest.hexdigest()


def _describe(paths: list[Path], root: Path) -> dict[str, dict]:
    return {str(p.relative_to(root)): {"bytes": p.stat().st_size, "fingerprint": fingerprint(p)} for p in paths}


class Manifest:
    """DATA_DIR/manifest.json: {"stages": {name: {"params": ..., "outputs": {relative path: {bytes, fingerprint}}}}}."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / MANIFEST
        self.stages: dict[str, Any] = json.loads(self.path.read_text())["stages"] if self.path.is_file() else {}

    def is_done(self, name: str, params: dict) -> bool:
        """The stage ran with these params and its outputs are all still there with their recorded fingerprints."""
        entry = self.stages.get(name)
        if entry is None or entry["params"] != json.loads(json.dumps(params)):
            return False
        for rel, want in entry["outputs"].items():
            path = self.root / rel
            if not path.is_file() or path.stat().st_size != want["bytes"] or fingerprint(path) != want["fingerprint"]:
                return False
        return True

    def record(self, name: str, params: dict, outputs: list[Path]) -> None:
        self.stages[name] = {"params": params, "outputs": _describe(outputs, self.root)}
        atomic_write_json(self.path, {"stages": self.stages})


# --------------------------------------------------------------------------------------------------------------------
# Split


def find_split(path: str | os.PathLike, valid_fraction: float, special_tokens: list[str]) -> int:
    """The byte offset where the validation part starts: the first document boundary at or after
    (1 - valid_fraction) of the file; a boundary is the end of a special token (the first one listed), else (when
    the text after that point holds none) the end of a line. Raises ValueError when there is no boundary there."""
    path = Path(path)
    size = path.stat().st_size
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction={valid_fraction} must be in (0, 1)")
    target = int(size * (1 - valid_fraction))
    markers = ([special_tokens[0].encode("utf-8")] if special_tokens else []) + [b"\n"]
    for marker in markers:
        cut = _next_boundary(path, target, size, marker)
        if cut is not None:
            return cut
    raise ValueError(
        f"cannot split {path.name} for validation: no document boundary after byte {target:,} of {size:,} "
        "(the last valid_fraction of the file); give a larger --valid-fraction or a separate --valid source"
    )


def _next_boundary(path: Path, target: int, size: int, marker: bytes) -> int | None:
    """The end of the first `marker` ending at or after `target` and before the end of the file, or None."""
    with open(path, "rb") as f:
        pos = max(0, target - len(marker))
        while pos < size:
            f.seek(pos)
            window = f.read(CHUNK + len(marker))
            hit = window.find(marker)
            while hit != -1 and pos + hit + len(marker) < target:
                hit = window.find(marker, hit + 1)
            if hit != -1:
                cut = pos + hit + len(marker)
                return cut if cut < size else None
            pos += CHUNK
    return None


def _copy_range(src: Path, dest: Path, start: int, end: int) -> None:
    def copy(out) -> None:
        with open(src, "rb") as f:
            f.seek(start)
            left = end - start
            while left > 0 and (chunk := f.read(min(CHUNK, left))):
                out.write(chunk)
                left -= len(chunk)

    atomic_write_bytes(dest, copy)


# --------------------------------------------------------------------------------------------------------------------
# The stages


def resolve_source(source: str, sha256: str | None = None) -> Path | Remote | Preset:
    """A local file's Path, a Remote for an http(s) URL, or the named Preset; ValueError for anything else."""
    if source.startswith(("http://", "https://")):
        name = Path(_url_path(source)).name
        if not name:
            raise ValueError(f"SOURCE {source!r}: the URL must end in a file name (e.g. .../corpus.txt.gz)")
        return Remote(source, sha256=sha256)
    if source in PRESETS:
        if sha256 is not None:
            raise ValueError("--sha256 applies to a URL source, not to a preset")
        return PRESETS[source]
    path = Path(source)
    if path.is_file():
        return path
    raise ValueError(
        f"SOURCE {source!r} is not a file, an http(s) URL or a preset (one of {sorted(PRESETS)}); check the path"
    )


def _url_path(url: str) -> str:
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(url).path)


class _Stages:
    """Runs the stages of one `prepare` against its manifest; `ran` maps stage name -> "ran" | "skipped"."""

    def __init__(self, root: Path, on_stage: Callable[[str], None] | None):
        self.root = root
        self.manifest = Manifest(root)
        self.on_stage = on_stage
        self.ran: dict[str, str] = {}

    def stage(self, name: str, params: dict, outputs: list[Path], work: Callable[[], None]) -> None:
        if self.manifest.is_done(name, params):
            self.ran[name] = "skipped"
            return
        if self.on_stage is not None:
            self.on_stage(name)
        work()
        self.manifest.record(name, params, outputs)
        self.ran[name] = "ran"

    def fetch(self, remote: Remote, progress: bool) -> Path:
        """Download (and decompress) a remote file; return the path of its text."""
        name = Path(_url_path(remote.url)).name
        compressed = name.endswith(COMPRESSED_SUFFIXES)
        dest = self.root / "downloads" / name if compressed else self.root / name
        params = {"url": remote.url, "bytes": remote.download_bytes, "sha256": remote.sha256}
        self.stage(
            f"download {name}",
            params,
            [dest],
            lambda: download(remote.url, dest, remote.download_bytes, remote.sha256, progress=progress),
        )
        if not compressed:
            return dest
        text = self.root / Path(name).stem

        def work() -> None:
            size = decompress(dest, text)
            if remote.text_bytes is not None and size != remote.text_bytes:
                text.unlink()
                raise DownloadError(f"{name} decompressed to {size:,} bytes, expected {remote.text_bytes:,}")

        self.stage(f"decompress {name}", {"input": fingerprint(dest), "bytes": remote.text_bytes}, [text], work)
        return text


def prepare(
    source: str,
    out: str | os.PathLike,
    vocab_size: int | None = None,
    special_tokens: list[str] | None = None,
    valid: str | None = None,
    valid_fraction: float = 0.01,
    workers: int = 1,
    sha256: str | None = None,
    progress: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Prepare `source` into DATA_DIR `out` (see the module docstring); return a report of what ran and what it made.

    source / valid: a local text file, an http(s) URL (text, .gz or .zst) or, for `source`, a preset name (which
    brings its validation split, vocabulary size and special tokens). Without a validation source the last
    `valid_fraction` of the text is held out. `on_stage(name)` is called before each stage that runs (not the
    skipped ones). Report keys: stages ({name: "ran" | "skipped"}), data_dir, tokenizer, train, valid (token
    files), train_tokens, valid_tokens, vocab_size, special_tokens, seconds.
    """
    t0 = time.perf_counter()
    train_src, valid_src, vocab_size, special_tokens = _resolve_inputs(
        source, valid, vocab_size, special_tokens, sha256
    )
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} must be a positive integer")
    if valid_src is None and not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction={valid_fraction} must be in (0, 1)")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"--out {str(root)!r} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    stages = _Stages(root, on_stage)

    texts = {}
    for split, src in (("train", train_src), ("valid", valid_src)):
        if src is not None:
            texts[split] = stages.fetch(src, progress) if isinstance(src, Remote) else src
    if "valid" not in texts:
        texts = _split_stage(stages, texts["train"], valid_fraction, special_tokens)

    tokenizer_dir = root / "tokenizer"
    tokenizer_files = [tokenizer_dir / n for n in ("vocab.json", "merges.txt", "special_tokens.json")]
    params = {"train": fingerprint(texts["train"]), "vocab_size": vocab_size, "special_tokens": special_tokens}
    stages.stage(
        "bpe",
        params,
        tokenizer_files,
        lambda: _train_tokenizer(texts["train"], tokenizer_dir, vocab_size, special_tokens, workers, progress),
    )

    from cs336_basics.workflows.tokenize import tokenize_file

    tokenizer_print = [fingerprint(p) for p in tokenizer_files]
    token_files = {}
    for split in ("train", "valid"):
        bin_path = root / f"{split}.bin"
        token_files[split] = bin_path
        stages.stage(
            f"tokenize {split}",
            {"text": fingerprint(texts[split]), "tokenizer": tokenizer_print},
            [bin_path, bin_path.with_name(bin_path.name + ".json")],
            lambda t=texts[split], b=bin_path: tokenize_file(
                t, b, tokenizer_dir, num_workers=workers, progress=progress
            ),
        )
    counts = {s: json.loads(p.with_name(p.name + ".json").read_text())["num_tokens"] for s, p in token_files.items()}
    return {
        "stages": stages.ran,
        "data_dir": str(root),
        "tokenizer": str(tokenizer_dir),
        "train": str(token_files["train"]),
        "valid": str(token_files["valid"]),
        "train_tokens": counts["train"],
        "valid_tokens": counts["valid"],
        "vocab_size": vocab_size,
        "special_tokens": special_tokens,
        "seconds": time.perf_counter() - t0,
    }


def _split_stage(stages: "_Stages", whole: Path, valid_fraction: float, special_tokens: list[str]) -> dict[str, Path]:
    """The "split" stage: hold out the last `valid_fraction` of `whole` (cut at a document boundary)."""
    texts = {"train": stages.root / "train.txt", "valid": stages.root / "valid.txt"}

    def split_work() -> None:
        cut = find_split(whole, valid_fraction, special_tokens)
        _copy_range(whole, texts["train"], 0, cut)
        _copy_range(whole, texts["valid"], cut, whole.stat().st_size)

    params = {"input": fingerprint(whole), "valid_fraction": valid_fraction, "special_tokens": special_tokens}
    stages.stage("split", params, [texts["train"], texts["valid"]], split_work)
    return texts


def _resolve_inputs(source, valid, vocab_size, special_tokens, sha256):
    """(train source, valid source or None, vocab_size, special_tokens) with the preset's defaults; checked."""
    resolved = resolve_source(source, sha256)
    if isinstance(resolved, Preset):
        if valid is not None:
            raise ValueError(f"preset {source!r} brings its own validation split; drop --valid")
        train_src, valid_src = resolved.train, resolved.valid
        vocab_size = vocab_size if vocab_size is not None else resolved.vocab_size
        special_tokens = list(resolved.special_tokens) if special_tokens is None else special_tokens
    else:
        train_src, valid_src = resolved, resolve_source(valid) if valid is not None else None
        if isinstance(valid_src, Preset):
            raise ValueError(f"--valid {valid!r} must be a file or a URL, not a preset")
        if vocab_size is None:
            raise ValueError("vocab_size (--vocab-size) is required unless SOURCE is a preset")
    special_tokens = ["<|endoftext|>"] if special_tokens is None else list(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size!r} must be an integer >= 256 + {len(special_tokens)} special tokens")
    return train_src, valid_src, vocab_size, special_tokens


def _train_tokenizer(
    text: Path, directory: Path, vocab_size: int, special_tokens: list[str], workers: int, progress: bool
) -> None:
    """Train BPE on `text` and write `directory` whole: built beside it, then renamed over any stale one."""
    from cs336_basics.bpe import train_bpe
    from cs336_basics.tokenizer_files import SPECIAL_TOKENS_FILE, save_tokenizer

    vocab, merges = train_bpe(text, vocab_size, special_tokens, num_workers=workers, progress=progress)

    def fill(tmp: Path) -> None:
        save_tokenizer(vocab, merges, tmp, special_tokens)
        if not special_tokens:  # (save_tokenizer writes the file only for a non-empty list; the manifest wants it)
            atomic_write_text(tmp / SPECIAL_TOKENS_FILE, "[]\n")

    if directory.exists():  # a stale, incomplete one (its stage did not finish)
        shutil.rmtree(directory)
    write_dir_atomically(directory, fill)
