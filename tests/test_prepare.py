"""`prepare`: local files and URLs (plain, gzip, zstd) served by a test server on 127.0.0.1 end as a tokenizer and
token files that decode back to the text; downloads resume after a cut; lies, 404s and corrupt archives give clear
errors and no outputs; a restart after an interruption at any stage redoes only the unfinished stages."""

import gzip
import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from cs336_basics import cli
from cs336_basics.tokenizer import Tokenizer
from cs336_basics.workflows.download import DownloadError, download
from cs336_basics.workflows.prepare import PRESETS, find_split, prepare

EOT = "<|endoftext|>"
WORDS = "the cat sat on a mat and saw one big red dog who ran to the park with lily".split()


def make_corpus(n_docs: int = 160) -> bytes:
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 30)))) + "." for _ in range(n_docs)]
    return "".join(f"{doc}\n{EOT}\n" for doc in docs).encode()


CORPUS = make_corpus()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /NAME serves FILES[NAME] with range support; /cut/NAME cuts the first response half-way; /liar/NAME
    announces 1000 bytes more than it sends and ignores ranges; /long/NAME sends 10 bytes more than its Content-Range
    announces as the file's size; anything else is a 404."""

    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []
    cut_once: set[str] = set()
    timeout = 5

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        self.requests.append((self.path, self.headers.get("Range")))
        mode, _, name = self.path.lstrip("/").rpartition("/")
        body = self.files.get(name)
        if body is None:
            self.send_error(404, "Not Found")
            return
        if mode == "liar":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        if mode == "long":
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body) - 10}")
        elif start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if mode == "cut" and name not in self.cut_once:
            self.cut_once.add(name)
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 (a free port) for this test only; stopped at the end of the test."""
    _Handler.files = {}
    _Handler.requests = []
    _Handler.cut_once = set()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def decoded(data_dir: Path, split: str) -> bytes:
    tokenizer = Tokenizer.from_dir(data_dir / "tokenizer")
    meta = json.loads((data_dir / f"{split}.bin.json").read_text())
    ids = np.fromfile(data_dir / f"{split}.bin", dtype=meta["dtype"])
    assert len(ids) == meta["num_tokens"]
    return tokenizer.decode(ids.tolist()).encode()


def outputs(data_dir: Path) -> set[str]:
    """What a prepare left in data_dir that a user would take as a result (not the download's resume state)."""
    if not data_dir.exists():
        return set()
    return {p.name for p in data_dir.iterdir() if not p.name.endswith(".part") and p.name != "downloads"}


def test_local_file_becomes_a_tokenizer_and_token_files_that_decode_back(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_bytes(CORPUS)
    report = prepare(str(source), tmp_path / "data", vocab_size=300, valid_fraction=0.1)
    data = tmp_path / "data"
    assert report["stages"] == {"split": "ran", "bpe": "ran", "tokenize train": "ran", "tokenize valid": "ran"}
    train_text, valid_text = decoded(data, "train"), decoded(data, "valid")
    assert train_text + valid_text == CORPUS
    assert train_text.endswith(EOT.encode()) and 0.08 < len(valid_text) / len(CORPUS) < 0.12
    assert len(json.loads((data / "tokenizer" / "vocab.json").read_text())) == 300
    assert report["train_tokens"] == json.loads((data / "train.bin.json").read_text())["num_tokens"]

    again = prepare(str(source), data, vocab_size=300, valid_fraction=0.1)
    assert set(again["stages"].values()) == {"skipped"}
    # a new vocabulary size redoes BPE and tokenization only
    bigger = prepare(str(source), data, vocab_size=320, valid_fraction=0.1)
    assert bigger["stages"] == {"split": "skipped", "bpe": "ran", "tokenize train": "ran", "tokenize valid": "ran"}
    # an output changed behind prepare's back is redone
    (data / "valid.bin").write_bytes(b"\0\0")
    assert prepare(str(source), data, vocab_size=320, valid_fraction=0.1)["stages"]["tokenize valid"] == "ran"


def flip_first_byte(path: Path) -> None:
    """Change a file behind prepare's back, keeping its size."""
    data = bytearray(path.read_bytes())
    data[0] ^= 0x20
    path.write_bytes(bytes(data))


def test_an_output_changed_behind_prepares_back_but_the_same_size_is_redone(tmp_path):
    """The manifest's fingerprint, not the size alone, says a stage is done: each tampered output's stage runs again
    and puts it back, and the stages after it skip (their inputs' fingerprints are as recorded)."""
    source = tmp_path / "corpus.txt"
    source.write_bytes(CORPUS)
    data = tmp_path / "data"
    prepare(str(source), data, vocab_size=300, valid_fraction=0.1)
    originals = {name: (data / name).read_bytes() for name in ("train.txt", "valid.bin", "tokenizer/merges.txt")}
    for name, stage in (("valid.bin", "tokenize valid"), ("train.txt", "split"), ("tokenizer/merges.txt", "bpe")):
        flip_first_byte(data / name)
        assert (data / name).stat().st_size == len(originals[name])
        report = prepare(str(source), data, vocab_size=300, valid_fraction=0.1)
        assert report["stages"] == {s: "ran" if s == stage else "skipped" for s in report["stages"]}, name
        assert (data / name).read_bytes() == originals[name]
    assert decoded(data, "train") + decoded(data, "valid") == CORPUS


@pytest.mark.parametrize("compression", ["plain", "gzip", "zstd"])
def test_urls_of_text_gzip_and_zstd(server, tmp_path, compression):
    url, handler = server
    valid_text = make_corpus(20)
    if compression == "gzip":
        handler.files = {"train.txt.gz": gzip.compress(CORPUS), "valid.txt.gz": gzip.compress(valid_text)}
    elif compression == "zstd":
        zstandard = pytest.importorskip("zstandard")
        compress = zstandard.ZstdCompressor().compress
        handler.files = {"train.txt.zst": compress(CORPUS), "valid.txt.zst": compress(valid_text)}
    else:
        handler.files = {"train.txt": CORPUS, "valid.txt": valid_text}
    train_name, valid_name = sorted(handler.files)
    data = tmp_path / "data"
    report = prepare(f"{url}/{train_name}", data, vocab_size=300, valid=f"{url}/{valid_name}")
    assert decoded(data, "train") == CORPUS and decoded(data, "valid") == valid_text
    assert report["stages"][f"download {train_name}"] == "ran"
    assert (f"decompress {train_name}" in report["stages"]) == (compression != "plain")
    handler.requests.clear()
    assert set(
        prepare(f"{url}/{train_name}", data, vocab_size=300, valid=f"{url}/{valid_name}")["stages"].values()
    ) == {"skipped"}
    assert handler.requests == []  # nothing downloaded again


def test_a_cut_transfer_resumes_with_a_range_request(server, tmp_path):
    url, handler = server
    handler.files = {"corpus.txt.gz": gzip.compress(CORPUS)}
    size = len(handler.files["corpus.txt.gz"])
    # within one call: the retry asks for the rest only
    prepare(f"{url}/cut/corpus.txt.gz", tmp_path / "a", vocab_size=300)
    assert handler.requests == [("/cut/corpus.txt.gz", None), ("/cut/corpus.txt.gz", f"bytes={size // 2}-")]
    assert decoded(tmp_path / "a", "train") + decoded(tmp_path / "a", "valid") == CORPUS
    # across calls: a single attempt stops with the part kept, the next call resumes it
    handler.cut_once.clear()
    dest = tmp_path / "b" / "corpus.txt.gz"
    with pytest.raises(DownloadError, match=f"only {size // 2:,} of the {size:,} bytes.*rerun to resume"):
        download(f"{url}/cut/corpus.txt.gz", dest, attempts=1)
    assert not dest.exists() and dest.with_name("corpus.txt.gz.part").stat().st_size == size // 2
    assert download(f"{url}/cut/corpus.txt.gz", dest) == size
    assert dest.read_bytes() == handler.files["corpus.txt.gz"] and not dest.with_name("corpus.txt.gz.part").exists()


def test_a_lying_server_a_404_and_a_corrupt_gzip_give_clear_errors_and_no_outputs(server, tmp_path):
    url, handler = server
    handler.files = {"corpus.txt": CORPUS, "bad.txt.gz": gzip.compress(CORPUS)[:-20] + b"garbage!" * 4}
    with pytest.raises(DownloadError, match=f"only {len(CORPUS):,} of the {len(CORPUS) + 1000:,} bytes"):
        prepare(f"{url}/liar/corpus.txt", tmp_path / "liar", vocab_size=300)
    assert outputs(tmp_path / "liar") == set()
    with pytest.raises(DownloadError, match="HTTP 404 Not Found"):
        prepare(f"{url}/missing.txt", tmp_path / "missing", vocab_size=300)
    assert outputs(tmp_path / "missing") == set()
    with pytest.raises(ValueError, match=r"bad.txt.gz is not valid gz data .*delete it to download it again"):
        prepare(f"{url}/bad.txt.gz", tmp_path / "bad", vocab_size=300)
    assert outputs(tmp_path / "bad") == {"manifest.json"}  # the download stage finished; nothing after it
    # an expected size or checksum that the file does not have
    with pytest.raises(DownloadError, match=f"announces {len(CORPUS):,} bytes, but this file should have 5"):
        download(f"{url}/corpus.txt", tmp_path / "x" / "corpus.txt", expected_bytes=5)
    with pytest.raises(DownloadError, match="sha256 .* does not match"):
        download(f"{url}/corpus.txt", tmp_path / "x" / "corpus.txt", sha256="0" * 64)
    assert not (tmp_path / "x" / "corpus.txt").exists()
    good = hashlib.sha256(CORPUS).hexdigest()
    assert download(f"{url}/corpus.txt", tmp_path / "x" / "corpus.txt", sha256=good) == len(CORPUS)


def test_a_download_longer_than_announced_is_refused_and_deleted(server, tmp_path):
    """More bytes than the server's announced size: an error, and neither the file nor its part is kept (a rerun
    starts over rather than resuming past the end)."""
    url, handler = server
    handler.files = {"corpus.txt": CORPUS}
    announced = len(CORPUS) - 10
    dest = tmp_path / "x" / "corpus.txt"
    with pytest.raises(DownloadError, match=f"stopped with more than the {announced:,} bytes the server announced"):
        download(f"{url}/long/corpus.txt", dest)
    assert not dest.exists() and not dest.with_name("corpus.txt.part").exists()
    with pytest.raises(DownloadError, match=f"more than the {announced:,} bytes"):
        prepare(f"{url}/long/corpus.txt", tmp_path / "data", vocab_size=300)
    assert outputs(tmp_path / "data") == set() and not (tmp_path / "data" / "corpus.txt.part").exists()


STAGES = ["download corpus.txt.gz", "decompress corpus.txt.gz", "split", "bpe", "tokenize train", "tokenize valid"]


class Killed(BaseException):
    """Stands for the process being killed (not an Exception: nothing may catch it)."""


@pytest.mark.parametrize("stage", STAGES)
def test_a_restart_after_a_kill_at_any_stage_redoes_only_the_unfinished_stages(server, tmp_path, stage):
    url, handler = server
    handler.files = {"corpus.txt.gz": gzip.compress(CORPUS)}
    data = tmp_path / "data"

    def kill_at(name: str) -> None:
        if name == stage:
            raise Killed

    with pytest.raises(Killed):
        prepare(f"{url}/corpus.txt.gz", data, vocab_size=300, on_stage=kill_at)
    report = prepare(f"{url}/corpus.txt.gz", data, vocab_size=300)
    k = STAGES.index(stage)
    assert report["stages"] == {s: "skipped" if i < k else "ran" for i, s in enumerate(STAGES)}
    assert decoded(data, "train") + decoded(data, "valid") == CORPUS


def test_a_kill_after_the_output_but_before_the_manifest_redoes_that_stage(tmp_path, monkeypatch):
    import cs336_basics.workflows.tokenize as tokenize_dataset

    source = tmp_path / "corpus.txt"
    source.write_bytes(CORPUS)
    real = tokenize_dataset.tokenize_file

    def write_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(tokenize_dataset, "tokenize_file", write_then_die)
    with pytest.raises(Killed):
        prepare(str(source), tmp_path / "data", vocab_size=300)
    monkeypatch.setattr(tokenize_dataset, "tokenize_file", real)
    report = prepare(str(source), tmp_path / "data", vocab_size=300)
    assert report["stages"]["tokenize train"] == "ran" and report["stages"]["bpe"] == "skipped"


def test_find_split_cuts_after_a_special_token_else_a_newline(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"aaaa<|endoftext|>bbbb<|endoftext|>cccc\ndddd")
    assert find_split(path, 0.6, [EOT]) == len(b"aaaa<|endoftext|>")
    assert find_split(path, 0.4, [EOT]) == len(b"aaaa<|endoftext|>bbbb<|endoftext|>")
    assert find_split(path, 0.15, [EOT]) == len(b"aaaa<|endoftext|>bbbb<|endoftext|>cccc\n")  # no EOT after: newline
    with pytest.raises(ValueError, match="no document boundary after byte"):
        find_split(path, 0.05, [EOT])


def test_bad_arguments_are_clear(tmp_path, server, capsys):
    source = tmp_path / "corpus.txt"
    source.write_bytes(CORPUS)
    with pytest.raises(ValueError, match="is not a file, an http\\(s\\) URL or a preset"):
        prepare(str(tmp_path / "nope.txt"), tmp_path / "data", vocab_size=300)
    with pytest.raises(ValueError, match="--vocab-size\\) is required"):
        prepare(str(source), tmp_path / "data")
    with pytest.raises(ValueError, match="vocab_size=100 must be an integer >= 256"):
        prepare(str(source), tmp_path / "data", vocab_size=100)
    with pytest.raises(ValueError, match="brings its own validation split"):
        prepare("tinystories", tmp_path / "data", valid=str(source))
    with pytest.raises(ValueError, match="valid_fraction=1.5 must be in"):
        prepare(str(source), tmp_path / "data", vocab_size=300, valid_fraction=1.5)
    assert not (tmp_path / "data").exists()
    assert cli.main(["prepare", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "d"), "--vocab-size", "300"]) == 2
    assert "is not a file" in capsys.readouterr().err
    url, _ = server
    assert cli.main(["prepare", f"{url}/missing.txt", "--out", str(tmp_path / "d"), "--vocab-size", "300"]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_cli_prepare_then_rerun(tmp_path, capsys):
    source = tmp_path / "corpus.txt"
    source.write_bytes(CORPUS)
    args = ["prepare", str(source), "--out", str(tmp_path / "data"), "--vocab-size", "300", "--no-progress"]
    assert cli.main(args) == 0
    assert "train.bin" in capsys.readouterr().out
    assert cli.main(args) == 0
    assert "already done, skipped: split, bpe, tokenize train, tokenize valid" in capsys.readouterr().out


def test_presets_are_the_handouts_files():
    assert PRESETS["tinystories"].train.url.endswith("roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt")
    assert PRESETS["owt"].valid.url.endswith("stanford-cs336/owt-sample/resolve/main/owt_valid.txt.gz")
    assert PRESETS["tinystories"].vocab_size == 10_000 and PRESETS["owt"].vocab_size == 32_000


def test_docs_list_every_preset_url_and_size():
    """docs/data.md's preset table agrees with PRESETS (the code is the source; the docs must follow it)."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    for preset in PRESETS.values():
        for remote in (preset.train, preset.valid):
            assert remote.url in docs
            for size in (remote.download_bytes, remote.text_bytes):
                assert size is None or f"{size:,}" in docs
