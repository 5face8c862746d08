"""Absolute positions: the sinusoidal table is the paper's formula and is derived state; learned positions are a
trained parameter in the state dict; both are added to the token embeddings, work with the KV cache, reject a
position beyond their table, and are selectable from train, probe and sweep."""

import math

import pytest
import torch

from cs336_basics import cli
from cs336_basics.layers import AbsolutePositionalEmbedding, sinusoidal_table
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.model_info import count_parameters

SMALL = dict(vocab_size=50, context_length=12, d_model=16, num_layers=2, num_heads=2)


@pytest.mark.parametrize("d_model", [6, 7])
def test_sinusoidal_table_is_the_formula(d_model):
    """P[pos, 2i] = sin(pos / 10000^(2i/d)), P[pos, 2i+1] = cos(pos / 10000^(2i/d)), odd widths included."""
    table = sinusoidal_table(20, d_model)
    assert table.shape == (20, d_model) and table.dtype == torch.float64
    for pos in range(20):
        for j in range(d_model):
            angle = pos / 10000 ** ((j - j % 2) / d_model)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert table[pos, j].item() == pytest.approx(expected, abs=1e-12), (pos, j)


def test_sinusoidal_positions_are_added_to_the_token_embeddings_and_not_saved():
    model = TransformerLM(ModelConfig(**SMALL, positions="sinusoidal"))
    ids = torch.randint(0, 50, (3, 10))
    seen = {}
    model.layers[0].register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    model(ids)
    expected = model.token_embeddings.weight[ids] + sinusoidal_table(12, 16)[:10].float()
    torch.testing.assert_close(seen["x"], expected)
    none = TransformerLM(ModelConfig(**SMALL, positions="none"))
    assert model.state_dict().keys() == none.state_dict().keys()  # the table is a non-persistent buffer
    assert count_parameters(model.config)["total"] == model.num_parameters()


def test_learned_positions_are_a_trained_parameter_in_the_state_dict():
    model = TransformerLM(ModelConfig(**SMALL, positions="learned"))
    weight = model.state_dict()["position_embeddings.weight"]
    assert weight.shape == (12, 16)
    assert 0.8 < weight.std().item() < 1.2 and weight.abs().max().item() <= 3.0  # like the token embeddings
    assert count_parameters(model.config)["total"] == model.num_parameters()
    assert count_parameters(model.config)["positions"] == 12 * 16
    ids = torch.randint(0, 50, (2, 12))
    model(ids).sum().backward()
    assert model.position_embeddings.weight.grad.abs().sum() > 0
    # a saved state dict brings the positions back
    other = TransformerLM(ModelConfig(**SMALL, positions="learned"))
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(ids), model(ids))
    # explicit token positions pick rows of the table
    seen = {}
    model.layers[0].register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    positions = torch.tensor([[5, 6, 7], [0, 2, 4]])
    model(ids[:, :3], token_positions=positions)
    torch.testing.assert_close(seen["x"], model.token_embeddings.weight[ids[:, :3]] + weight[positions])


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_a_position_beyond_the_table_is_a_clear_error(kind):
    table = AbsolutePositionalEmbedding(kind, max_seq_len=8, d_model=4)
    assert table(torch.arange(8)).shape == (8, 4)
    with pytest.raises(ValueError, match=f"position 8 is outside the {kind} position table of max_seq_len=8"):
        table(torch.arange(9))
    with pytest.raises(ValueError, match="position -1 is outside"):
        table(torch.tensor([-1, 0]))
    model = TransformerLM(ModelConfig(**SMALL, positions=kind))
    with pytest.raises(ValueError, match="position 12 is outside"):
        model(torch.zeros(1, 2, dtype=torch.long), token_positions=torch.tensor([[11, 12]]))
    with pytest.raises(ValueError, match="exceeds context_length=12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="kind='alibi' must be"):
        AbsolutePositionalEmbedding("alibi", max_seq_len=8, d_model=4)


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_kv_cache_decoding_matches_the_full_forward(kind):
    """Cached steps continue at positions cache.length.., so they see the same absolute positions."""
    model = TransformerLM(ModelConfig(**SMALL, positions=kind)).eval()
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache()
        steps = [model(ids[:, :5], kv_cache=cache)] + [model(ids[:, t : t + 1], kv_cache=cache) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("command", ["train", "probe", "model-info"])
def test_the_position_kinds_are_choices_of_the_clis(command):
    args = {"train": ["train"], "probe": ["probe", "reversal"], "model-info": ["model-info"]}[command]
    for kind in ("rope", "sinusoidal", "learned", "none"):
        parsed = cli.build_parser(command).parse_args([*args, "--positions", kind])
        assert parsed.positions == kind
    with pytest.raises(SystemExit):
        cli.build_parser(command).parse_args([*args, "--positions", "alibi"])
