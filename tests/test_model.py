"""Model layers against torch built-ins and float64 references, through the adapter contract."""

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from . import adapters


def test_linear_matches_matmul_with_weight_transposed():
    w, x = torch.randn(5, 3), torch.randn(2, 4, 3)
    assert_close(adapters.run_linear(d_in=3, d_out=5, weights=w, in_features=x), F.linear(x, w))


def test_transformer_lm_runs_on_short_inputs():
    from cs336_basics.layers import ModelConfig, TransformerLM

    config = ModelConfig(vocab_size=50, context_length=8, d_model=16, num_layers=2, num_heads=2, d_ff=24)
    weights = TransformerLM(config).state_dict()
    ids = torch.randint(0, 50, (2, 5))
    logits = adapters.run_transformer_lm(
        vocab_size=50,
        context_length=8,
        d_model=16,
        num_layers=2,
        num_heads=2,
        d_ff=24,
        rope_theta=10000.0,
        weights=weights,
        in_indices=ids,
    )
    assert logits.shape == (2, 5, 50)
