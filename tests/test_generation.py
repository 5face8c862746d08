"""Sampling: the KV cache changes nothing but the cost, top-p/top-k keep the right sets, EOS stops, and bad
sampling settings fail clearly; plus the model-info accounting against torch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cs336_basics import cli
from cs336_basics.generation import generate, generate_text, sample_next_token
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.model_info import count_parameters, forward_flops_per_token, memory_bytes, model_report

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model(**overrides) -> TransformerLM:
    values = dict(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4)
    values.update(overrides)
    return TransformerLM(ModelConfig(**values)).eval()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(norm="post"),
        dict(positions="none"),
        dict(ffn="silu", tie_embeddings=True),
        dict(attention_backend="sdpa"),
        dict(qk_norm=True, ffn="relu2", logit_softcap=5.0, zero_init_proj=True),
    ],
)
def test_greedy_with_and_without_kv_cache_is_identical(overrides):
    """30 greedy tokens from a 5-token prompt (past the 16-token context, so the window slides): same ids."""
    model = small_model(**overrides)
    prompt = torch.randint(0, 50, (3, 5))
    cached = generate(model, prompt, 30, temperature=0)
    uncached = generate(model, prompt, 30, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)


def test_kv_cache_logits_match_full_forward():
    """Prefill 7 positions, then 5 one-token steps: the logits equal one full forward over the 12 positions."""
    model = small_model()
    ids = torch.randint(0, 50, (2, 12))
    cache = model.new_kv_cache()
    with torch.no_grad():
        parts = [model(ids[:, :7], kv_cache=cache)] + [model(ids[:, i : i + 1], kv_cache=cache) for i in range(7, 12)]
        full = model(ids)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 12


@pytest.mark.parametrize("backend", ["scratch", "sdpa"])
@pytest.mark.parametrize("positions", ["rope", "sinusoidal", "learned", "none"])
def test_kv_cache_chunks_of_any_length_after_any_prefix_match_full_forward(backend, positions):
    """A prefill of any length, then chunks of several tokens: each chunk's queries see the cached keys and, causally,
    their own chunk's (the mask offset by the cached length); the logits equal one full forward's."""
    model = small_model(attention_backend=backend, positions=positions)
    ids = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        full = model(ids)
        for prefix in (1, 2, 5, 8):
            for chunk in (2, 3, 4, 7):
                cache = model.new_kv_cache()
                parts = [model(ids[:, :prefix], kv_cache=cache)]
                for start in range(prefix, 16, chunk):
                    parts.append(model(ids[:, start : start + chunk], kv_cache=cache))
                assert cache.length == 16
                where = f"prefix {prefix}, chunks of {chunk}"
                torch.testing.assert_close(
                    torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5, msg=lambda m, where=where: f"{where}: {m}"
                )


def test_kv_cache_costs_one_position_per_token():
    """After the prefill, each step's forward sees exactly one position (the FLOPs of a 1-token forward)."""
    model = small_model()
    cache = model.new_kv_cache()
    with torch.no_grad():
        model(torch.randint(0, 50, (1, 8)), kv_cache=cache)
        with FlopCounterMode(display=False) as counter:
            model(torch.randint(0, 50, (1, 1)), kv_cache=cache)
    config = model.config
    projections_and_head = config.num_layers * (8 * 32 * 32 + 6 * 32 * config.resolved_d_ff) + 2 * 32 * 50
    attention = config.num_layers * 2 * 2 * 9 * 32  # one query against 9 keys
    assert counter.get_total_flops() == projections_and_head + attention


def test_kv_cache_overflow_is_an_error():
    model = small_model()
    cache = model.new_kv_cache()
    model(torch.zeros(1, 16, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match=r"sequence length 17 \(cached 16 \+ new 1\) exceeds context_length=16"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


def test_top_p_keeps_the_smallest_set_reaching_p():
    """probs (0.5, 0.3, 0.15, 0.05): p=0.8 keeps {0, 1}; p=0.81 keeps {0, 1, 2}; p=0.4 keeps {0}."""
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(4000, 4)
    gen = torch.Generator().manual_seed(0)
    for p, expected in ((0.8, {0, 1}), (0.81, {0, 1, 2}), (0.4, {0}), (1.0, {0, 1, 2, 3})):
        seen = set(sample_next_token(logits, temperature=1.0, top_p=p, generator=gen).tolist())
        assert seen == expected, p
    # Within the kept set, the renormalized probabilities: 0.5/0.8 and 0.3/0.8.
    draws = sample_next_token(logits, temperature=1.0, top_p=0.8, generator=gen)
    assert (draws == 0).float().mean().item() == pytest.approx(0.625, abs=0.03)


def test_top_k_and_temperature_zero():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]]).expand(2000, 4)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next_token(logits, top_k=2, generator=gen).tolist()) == {1, 2}
    assert sample_next_token(logits, temperature=0).unique().tolist() == [1]


class _FixedLogits(torch.nn.Module):
    """A stand-in model whose next-token logits are always `logits` (V,), whatever the input."""

    def __init__(self, logits: torch.Tensor, context_length: int = 8):
        super().__init__()
        self.logits = logits
        self.config = ModelConfig(
            vocab_size=len(logits), context_length=context_length, d_model=4, num_layers=1, num_heads=1
        )

    def forward(self, ids: torch.Tensor, kv_cache=None) -> torch.Tensor:
        return self.logits.expand(*ids.shape, len(self.logits))


@pytest.mark.parametrize("temperature", [0.5, 2.0, 3.0])
def test_sampling_frequencies_follow_softmax_of_logits_over_temperature(temperature):
    """At temperatures other than 0 and 1 the draws follow softmax(logits / T): a temperature applied twice
    (softmax(logits / T²)) or not at all moves some frequency by > 0.05, ten times the tolerance used here."""
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0])
    expected = torch.softmax(logits / temperature, dim=-1)
    n = 40_000  # the standard error of a frequency is at most 0.5 / sqrt(n) = 0.0025
    gen = torch.Generator().manual_seed(0)
    draws = sample_next_token(logits.expand(n, 4), temperature=temperature, generator=gen)
    freq = torch.bincount(draws, minlength=4).double() / n
    assert torch.allclose(freq, expected.double(), atol=0.012), (freq, expected)
    # The same through generate() (which must not scale the logits again before sampling).
    model = _FixedLogits(logits)
    new = generate(
        model, torch.zeros(n, 1, dtype=torch.long), 1, temperature=temperature, generator=gen, use_cache=False
    )
    freq = torch.bincount(new[:, 0], minlength=4).double() / n
    assert torch.allclose(freq, expected.double(), atol=0.012), (freq, expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-0.5), "temperature=-0.5 must be >= 0"),
        (dict(top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p=1.5 must be in \(0, 1\]"),
        (dict(top_k=0), "top_k=0 must be a positive integer"),
    ],
)
def test_bad_sampling_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(small_model(), torch.zeros(1, 2, dtype=torch.long), 3, **kwargs)


class _CharTokenizer:
    """Ids 0..25 are 'a'..'z'; id 26 is <|endoftext|>."""

    def encode(self, text):
        if text == "<|endoftext|>":
            return [26]
        return [ord(c) - 97 for c in text]

    def decode(self, ids):
        return "".join(chr(i + 97) if i < 26 else "<|endoftext|>" for i in ids)


class _ScriptedLM(torch.nn.Module):
    """Predicts (greedily) the id after the last one in `script`, a fixed chain like c -> d -> <|endoftext|>."""

    def __init__(self, script: dict[int, int], vocab_size: int = 27):
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab_size, context_length=16, d_model=4, num_layers=1, num_heads=1)
        self.script = script
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, ids, kv_cache=None):
        logits = torch.zeros(*ids.shape, self.config.vocab_size)
        for b in range(ids.shape[0]):
            logits[b, -1, self.script.get(int(ids[b, -1]), 0)] = 1.0
        return logits


def test_generation_stops_at_end_of_text():
    """The text ends before <|endoftext|>; a finished row keeps emitting EOS while the others go on."""
    model = _ScriptedLM({1: 2, 2: 3, 3: 26, 4: 5, 5: 6, 6: 7, 7: 26})
    text = generate_text(model, _CharTokenizer(), "ab", max_new_tokens=20, temperature=0, use_cache=False)
    assert text == "cd"
    out = generate(model, torch.tensor([[2], [4]]), 6, temperature=0, eos_token_id=26, use_cache=False)
    assert out.tolist() == [[3, 26, 26, 26], [5, 6, 7, 26]]


def test_generate_cli_errors(tmp_path, capsys):
    args = ["generate", "--checkpoint", str(tmp_path / "x.pt"), "--tokenizer", str(tmp_path), "--prompt", "hi"]
    assert cli.main([*args, "--top-p", "1.2"]) == 2
    assert "top_p=1.2 must be in (0, 1]" in capsys.readouterr().err
    assert cli.main([*args, "--temperature", "-1"]) == 2
    assert "temperature=-1.0 must be >= 0" in capsys.readouterr().err
    assert cli.main([*args, "--device", "cuda:9"]) == 2
    assert "device='cuda:9'" in capsys.readouterr().err
    assert cli.main([*args, "--device", "cpu"]) == 2
    assert "x.pt' does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# model-info


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(ffn="silu"),
        dict(tie_embeddings=True),
        dict(norm="none"),
        dict(d_ff=None, d_model=48, num_heads=3),
        dict(qk_norm=True, ffn="relu2", logit_softcap=15.0, zero_init_proj=True),
        dict(qk_norm=True, norm="none"),
    ],
)
def test_parameter_count_matches_the_model(overrides):
    model = small_model(**overrides)
    assert count_parameters(model.config)["total"] == model.num_parameters()


@pytest.mark.parametrize(
    "overrides",
    [{}, dict(ffn="silu", d_ff=96), dict(positions="none"), dict(qk_norm=True, ffn="relu2", logit_softcap=15.0)],
)
def test_flops_match_torch_flop_counter(overrides):
    """Forward matmul FLOPs = formula × tokens, and the backward pass costs exactly 2× the forward."""
    model = small_model(**overrides).train()
    ids = torch.randint(0, 50, (2, 16))
    with FlopCounterMode(display=False) as fwd_counter:
        logits = model(ids)
    with FlopCounterMode(display=False) as bwd_counter:
        logits.sum().backward()
    expected = forward_flops_per_token(model.config)["total"] * ids.numel()
    assert fwd_counter.get_total_flops() == expected
    assert bwd_counter.get_total_flops() == 2 * expected


def test_memory_accounting_of_the_tinystories_model():
    config = ModelConfig(vocab_size=10_000, context_length=256, d_model=512, d_ff=1344, num_layers=4, num_heads=16)
    report = model_report(config, batch_size=128)
    assert report["parameters"]["total"] == 22_696_448
    mem = memory_bytes(config, 128)
    assert mem["optimizer_state"] == 2 * mem["parameters"] == 2 * 4 * 22_696_448
    assert mem["total"] == mem["parameters"] + mem["gradients"] + mem["optimizer_state"] + mem["activations"]
    with pytest.raises(ValueError, match="batch_size=0 must be positive"):
        memory_bytes(config, 0)


def test_model_info_cli(capsys):
    assert cli.main(["model-info", "--d-model", "64", "--num-heads", "4", "--d-ff", "128", "--json"]) == 0
    assert '"total"' in capsys.readouterr().out
    assert cli.main(["model-info", "--d-model", "30", "--num-heads", "4"]) == 2
    assert "divisible by num_heads" in capsys.readouterr().err


def test_peak_flops_table():
    from cs336_basics.runtime import peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.5e12
    assert peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756.0e12
    assert peak_flops("NVIDIA H200", "float32") == 66.9e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0e12
    assert peak_flops("NVIDIA GeForce RTX 4090", "bfloat16") is None
