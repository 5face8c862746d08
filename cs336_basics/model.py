"""The Transformer language model: the block and the LM (the layers are in layers.py, the settings in config.py).

`TransformerLM(ModelConfig(...))` builds the model a ModelConfig describes, with every switch of config.py: norm
placement `pre | post | none`, positions `rope | sinusoidal | learned | none` (absolute ones are added to the token
embeddings), feed-forward `swiglu | silu | relu2`, tied embeddings, the opt-in fast paths, and the modern recipe's
switches (docs/recipe.md): `qk_norm` (RMSNorm of each head's q and k before RoPE), `ffn="relu2"` (squared ReLU),
`logit_softcap` (c·tanh(logits/c)) and `zero_init_proj` (the attention and feed-forward output projections start at
zero, so every block starts as the identity).
"""

from typing import get_args

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from cs336_basics.config import (
    AttentionBackend,
    FeedForwardKind,
    KernelKind,
    ModelConfig,
    NormPlacement,
)
from cs336_basics.kv_cache import KVCache, LayerKVCache
from cs336_basics.layers import (
    AbsolutePositionalEmbedding,
    Embedding,
    Linear,
    MultiHeadSelfAttention,
    ReLU2FeedForward,
    RMSNorm,
    RotaryPositionalEmbedding,
    SiLUFeedForward,
    SwiGLU,
)

FEED_FORWARDS = {"swiglu": SwiGLU, "silu": SiLUFeedForward, "relu2": ReLU2FeedForward}


class TransformerBlock(nn.Module):
    """One Transformer block. pre: x + attn(ln1(x)), then + ffn(ln2(.)); post: ln1(x + attn(x)), then ln2(. + ffn(.));
    none: no norms at all."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        max_seq_len: int | None = None,
        theta: float | None = None,
        rope: RotaryPositionalEmbedding | None = None,
        norm: NormPlacement = "pre",
        ffn: FeedForwardKind = "swiglu",
        attention_backend: AttentionBackend = "scratch",
        norm_eps: float = 1e-5,
        device=None,
        dtype=None,
        kernels: "KernelKind" = "torch",
        qk_norm: bool = False,
    ):
        super().__init__()
        if norm not in get_args(NormPlacement):
            raise ValueError(f"norm={norm!r} must be one of {get_args(NormPlacement)}")
        if ffn not in get_args(FeedForwardKind):
            raise ValueError(f"ffn={ffn!r} must be one of {get_args(FeedForwardKind)}")
        self.norm = norm
        kw = dict(device=device, dtype=dtype)
        self.attn = MultiHeadSelfAttention(
            d_model,
            num_heads,
            max_seq_len,
            theta,
            rope,
            attention_backend,
            **kw,
            kernels=kernels,
            qk_norm=qk_norm,
            norm_eps=norm_eps,
        )
        self.ffn = FEED_FORWARDS[ffn](d_model, d_ff, **kw)
        if norm != "none":
            self.ln1 = RMSNorm(d_model, eps=norm_eps, **kw, kernels=kernels)
            self.ln2 = RMSNorm(d_model, eps=norm_eps, **kw, kernels=kernels)

    def forward(
        self,
        x: Float[Tensor, " batch seq d_model"],
        token_positions: Int[Tensor, " batch seq"] | None = None,
        kv_cache: "LayerKVCache | None" = None,
    ) -> Float[Tensor, " batch seq d_model"]:
        if self.norm == "pre":
            x = x + self.attn(self.ln1(x), token_positions, kv_cache)
            return x + self.ffn(self.ln2(x))
        if self.norm == "post":
            x = self.ln1(x + self.attn(x, token_positions, kv_cache))
            return self.ln2(x + self.ffn(x))
        x = x + self.attn(x, token_positions, kv_cache)
        return x + self.ffn(x)


class TransformerLM(nn.Module):
    """Token ids (B, T) -> unnormalized next-token logits (B, T, V).

    >>> model = TransformerLM(ModelConfig(vocab_size=100, context_length=16, d_model=32, num_layers=2, num_heads=4))
    >>> model(torch.zeros(2, 16, dtype=torch.long)).shape
    torch.Size([2, 16, 100])
    """

    def __init__(self, config: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        kw = dict(device=device, dtype=dtype)
        self.token_embeddings = Embedding(config.vocab_size, config.d_model, **kw)
        self.position_embeddings = (
            AbsolutePositionalEmbedding(config.positions, config.context_length, config.d_model, **kw)
            if config.positions in ("sinusoidal", "learned")
            else None
        )
        d_k = config.d_model // config.num_heads
        rope = (
            RotaryPositionalEmbedding(config.rope_theta, d_k, config.context_length, device=device)
            if config.positions == "rope"
            else None
        )
        self.layers = nn.ModuleList(
            TransformerBlock(
                config.d_model,
                config.num_heads,
                config.resolved_d_ff,
                rope=rope,  # one cos/sin table shared by every layer
                norm=config.norm,
                ffn=config.ffn,
                attention_backend=config.attention_backend,
                norm_eps=config.norm_eps,
                kernels=config.kernels,
                qk_norm=config.qk_norm,
                **kw,
            )
            for _ in range(config.num_layers)
        )
        if config.zero_init_proj:  # every residual branch starts at zero: the blocks start as the identity
            for layer in self.layers:
                nn.init.zeros_(layer.attn.output_proj.weight)
                nn.init.zeros_(layer.ffn.w2.weight)
        if config.norm != "none":
            self.ln_final = RMSNorm(config.d_model, eps=config.norm_eps, **kw, kernels=config.kernels)
        self.lm_head = Linear(config.d_model, config.vocab_size, **kw)
        if config.tie_embeddings:
            # One matrix serves as both. It keeps lm_head's init (std sqrt(2/(V+d))): the embedding's std 1 would
            # make the initial logits ~sqrt(d_model) large.
            self.token_embeddings.weight = self.lm_head.weight

    def forward(
        self,
        in_indices: Int[Tensor, " batch seq"],
        token_positions: Int[Tensor, " batch seq"] | None = None,
        kv_cache: "KVCache | None" = None,
    ) -> Float[Tensor, " batch seq vocab_size"]:
        """With `kv_cache` (see `new_kv_cache`), `in_indices` are the tokens after the cached ones: only they are
        computed, at positions cache.length .., and the cache grows by seq."""
        seq_len = in_indices.shape[-1]
        past = 0 if kv_cache is None else kv_cache.length
        if past + seq_len > self.config.context_length:
            raise ValueError(
                f"sequence length {past + seq_len} (cached {past} + new {seq_len}) exceeds "
                f"context_length={self.config.context_length}; "
                "truncate the input or build the model with a longer context"
            )
        x = self.token_embeddings(in_indices)
        if self.position_embeddings is not None:
            if token_positions is None:
                positions = torch.arange(past, past + seq_len, device=in_indices.device)
            else:
                positions = token_positions
            x = x + self.position_embeddings(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, token_positions, None if kv_cache is None else kv_cache.layers[i])
        if self.config.norm != "none":
            x = self.ln_final(x)
        logits = self.lm_head(x)
        if self.config.logit_softcap:  # bounded logits: c·tanh(logits/c), ~identity while |logits| << c
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def new_kv_cache(self) -> "KVCache":
        """An empty key/value cache for incremental decoding with `forward(..., kv_cache=cache)`."""
        return KVCache(self.config.num_layers, self.config.context_length)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (a tied matrix counted once); optionally without the input embedding table."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and not self.config.tie_embeddings:
            n -= self.token_embeddings.weight.numel()
        return n
