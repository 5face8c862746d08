"""Model accounting as in the CS336 handout: parameters, matmul FLOPs per token, training memory for a batch.

FLOPs count only matrix multiplies (2 FLOPs per multiply-add), as the handout does; per token and layer:
    Q, K, V, output projections      4 · 2·d_model²
    attention scores Q Kᵀ and A·V    2 · 2·T·d_model      (the full T×T matrix, as the handout counts it)
    feed-forward                     3 · 2·d_model·d_ff (SwiGLU) or 2 · 2·d_model·d_ff (SiLU, ReLU²)
plus the LM head 2·d_model·V. The backward pass costs twice the forward, so training costs 3× forward. The
modern switches add no matmuls (QK-norm, ReLU², the logit soft-cap and zero init are elementwise or init only);
QK-norm adds 2·d_k gains per layer.

Memory for AdamW training in float32 (4 bytes per value): parameters, gradients, optimizer state (m and v:
2 values per parameter) and the activations the handout lists, for batch B and sequence T, per layer:
RMSNorms 2·BTd; Q, K, V 3·BTd; scores QKᵀ and softmax 2·B·H·T²; weighted values BTd; output projection BTd;
feed-forward W1 (and W3 for SwiGLU) B·T·d_ff each, SiLU (or ReLU²) B·T·d_ff, (the gate product B·T·d_ff), W2 BTd;
with QK-norm, the normed Q and K 2·BTd;
and once: the embedding output BTd, final RMSNorm BTd, logits BTV and the cross-entropy's softmax BTV.

    cs336-basics model-info --vocab-size 10000 --context-length 256 --d-model 512 --d-ff 1344 --num-layers 4 \\
        --num-heads 16 --batch-size 128
"""

from cs336_basics.config import ModelConfig

BYTES_FP32 = 4


def count_parameters(config: ModelConfig) -> dict[str, int]:
    """Parameter counts by part; `total` counts a tied embedding matrix once."""
    d, d_ff, v, n_layers = config.d_model, config.resolved_d_ff, config.vocab_size, config.num_layers
    ffn_mats = 3 if config.ffn == "swiglu" else 2
    norms = (2 * d if config.norm != "none" else 0) + (2 * (d // config.num_heads) if config.qk_norm else 0)
    per_layer = 4 * d * d + ffn_mats * d * d_ff + norms
    embedding = v * d
    lm_head = v * d
    final_norm = d if config.norm != "none" else 0
    positions = config.context_length * d if config.positions == "learned" else 0  # GPT-2-style table
    total = per_layer * n_layers + final_norm + lm_head + positions + (0 if config.tie_embeddings else embedding)
    return {
        "embedding": embedding,
        "per_layer": per_layer,
        "layers": per_layer * n_layers,
        "final_norm": final_norm,
        "positions": positions,
        "lm_head": lm_head,
        "total": total,
        "non_embedding": total - (0 if config.tie_embeddings else embedding),
    }


def forward_flops_per_token(config: ModelConfig, seq_len: int | None = None) -> dict[str, int]:
    """Matmul FLOPs per token of one forward pass over sequences of `seq_len` (default: the context length)."""
    t = config.context_length if seq_len is None else seq_len
    d, d_ff, v, n_layers = config.d_model, config.resolved_d_ff, config.vocab_size, config.num_layers
    ffn_mats = 3 if config.ffn == "swiglu" else 2
    projections = 4 * 2 * d * d
    attention = 2 * 2 * t * d
    ffn = ffn_mats * 2 * d * d_ff
    lm_head = 2 * d * v
    return {
        "attention_projections": n_layers * projections,
        "attention_scores_and_values": n_layers * attention,
        "feed_forward": n_layers * ffn,
        "lm_head": lm_head,
        "total": n_layers * (projections + attention + ffn) + lm_head,
    }


def training_flops_per_token(config: ModelConfig, seq_len: int | None = None) -> int:
    """Forward + backward matmul FLOPs per token: 3 × forward (the backward pass costs two forwards)."""
    return 3 * forward_flops_per_token(config, seq_len)["total"]


def memory_bytes(config: ModelConfig, batch_size: int, seq_len: int | None = None) -> dict[str, int]:
    """Bytes of float32 AdamW training state and activations for one batch (the handout's accounting)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    t = config.context_length if seq_len is None else seq_len
    b, d, d_ff, v, h = batch_size, config.d_model, config.resolved_d_ff, config.vocab_size, config.num_heads
    n_params = count_parameters(config)["total"]
    ffn_acts = (4 if config.ffn == "swiglu" else 2) * b * t * d_ff  # W1, (W3), SiLU, (gate product)
    norms = (2 * b * t * d if config.norm != "none" else 0) + (2 * b * t * d if config.qk_norm else 0)
    per_layer = norms + 3 * b * t * d + 2 * b * h * t * t + b * t * d + b * t * d + ffn_acts + b * t * d
    once = b * t * d + (b * t * d if config.norm != "none" else 0) + 2 * b * t * v
    activations = (per_layer * config.num_layers + once) * BYTES_FP32
    parameters = n_params * BYTES_FP32
    out = {
        "parameters": parameters,
        "gradients": parameters,
        "optimizer_state": 2 * parameters,
        "activations": activations,
    }
    out["total"] = sum(out.values())
    return out


def model_report(config: ModelConfig, batch_size: int) -> dict:
    """Everything `model-info` prints, as a JSON-able dict."""
    fwd = forward_flops_per_token(config)
    return {
        "config": config.to_dict() | {"d_ff": config.resolved_d_ff},
        "parameters": count_parameters(config),
        "flops_per_token": {
            "forward": fwd,
            "backward": 2 * fwd["total"],
            "training": training_flops_per_token(config),
        },
        "memory_bytes": memory_bytes(config, batch_size) | {"batch_size": batch_size},
    }
