"""The Hugging Face Llama format: the name, layout and settings mapping shared by `hf_export` and `hf_import`.

Our default architecture (pre-norm RMSNorm, RoPE, SwiGLU, no biases, multi-head attention) *is* Llama's, so a
model converts by renaming its tensors, with one exception, the rotary layout of the q/k projections:

- ours rotates adjacent pairs (x[2k], x[2k+1]) of each head by the angle pos / theta^(2k/D);
- Llama (`rotate_half` in transformers) rotates the pairs (x[k], x[k + D/2]) by the same angle.

So feature 2k of a head is Llama's feature k, and feature 2k+1 is Llama's k + D/2. Exporting reorders the rows
of each head of q_proj and k_proj with `ROPE_TO_HF = [0, 2, 4, ..., D-2, 1, 3, ..., D-1]` (Llama row j = our row
ROPE_TO_HF[j]); importing applies the inverse. The same permutation P of q and k leaves every score
q·k = (Pq)·(Pk) unchanged, and v and the output projection do not move, so the two models compute the same
function; the tensors are reindexed, never recomputed, so export -> import gives back bit-identical weights.

Only `safetensors` is needed to convert (the `hf` extra also brings `transformers`, for loading the result).
"""

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cs336_basics.config import ModelConfig
from cs336_basics.tokenizer_files import decode_token, encode_token

HF_EXTRA = "pip install 'cs336-basics[hf]' (or, in a checkout: uv sync --extra hf)"
MAX_TOKEN_ID_RANGE = 1 << 32  # token files hold uint16 or uint32 ids (tokenize_dataset), so ids must be < 2**32
EOS_TOKEN = "<|endoftext|>"


class MissingExtraError(ModuleNotFoundError):
    """A package of the `hf` extra is not installed; the message says how to install it."""


def require_safetensors():
    """The `safetensors.torch` module, or MissingExtraError naming the extra to install."""
    try:
        import safetensors.torch
    except ImportError as e:
        raise MissingExtraError(f"Hugging Face conversion needs the 'safetensors' package ({e}); {HF_EXTRA}") from e
    return safetensors.torch


# --------------------------------------------------------------------------------------------------------------------
# RoPE layout


def rope_to_hf(d_k: int) -> Tensor:
    """Row order of one head in Llama's layout: Llama row j is our row `rope_to_hf(d_k)[j]`.

    Example: rope_to_hf(6) -> [0, 2, 4, 1, 3, 5].
    """
    return torch.cat([torch.arange(0, d_k, 2), torch.arange(1, d_k, 2)])


def permute_heads(weight: Tensor, num_heads: int, order: Tensor) -> Tensor:
    """Reorder the rows of each head of a (num_heads·D, d_in) projection: row j of head h <- row order[j]."""
    d_k = weight.shape[0] // num_heads
    return weight.reshape(num_heads, d_k, -1)[:, order].reshape(weight.shape)


# --------------------------------------------------------------------------------------------------------------------
# Tensor names


def hf_names(num_layers: int, tie_embeddings: bool) -> dict[str, str]:
    """Our state-dict name -> Llama's (transformers' LlamaForCausalLM) name. A tied model has no lm_head entry in
    Llama's files (transformers ties it to the embedding), so it is left out here."""
    names = {"token_embeddings.weight": "model.embed_tokens.weight", "ln_final.weight": "model.norm.weight"}
    if not tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for i in range(num_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        for a, b in (
            ("ln1", "input_layernorm"),
            ("attn.q_proj", "self_attn.q_proj"),
            ("attn.k_proj", "self_attn.k_proj"),
            ("attn.v_proj", "self_attn.v_proj"),
            ("attn.output_proj", "self_attn.o_proj"),
            ("ln2", "post_attention_layernorm"),
            ("ffn.w1", "mlp.gate_proj"),  # silu(w1 x) * w3 x: w1 is the gate
            ("ffn.w3", "mlp.up_proj"),
            ("ffn.w2", "mlp.down_proj"),
        ):
            names[f"{ours}{a}.weight"] = f"{theirs}{b}.weight"
    return names


def _is_rotated(name: str) -> bool:
    return name.endswith(("attn.q_proj.weight", "attn.k_proj.weight"))


def to_hf_state_dict(state_dict: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Our TransformerLM weights -> Llama's names and RoPE layout (contiguous tensors, none shared)."""
    order = rope_to_hf(config.d_model // config.num_heads)
    out = {}
    for ours, theirs in hf_names(config.num_layers, config.tie_embeddings).items():
        w = state_dict[ours]
        out[theirs] = (permute_heads(w, config.num_heads, order) if _is_rotated(ours) else w).contiguous()
    return out


def from_hf_state_dict(tensors: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Llama weights (transformers' names) -> our TransformerLM state dict; the inverse of `to_hf_state_dict`.

    Raises ValueError naming missing tensors, and extra ones (biases, or layers beyond num_layers).
    """
    names = hf_names(config.num_layers, config.tie_embeddings)
    # a tied checkpoint may still carry lm_head.weight (a copy); rotary inv_freq buffers are derived state
    ignorable = {"lm_head.weight"} if config.tie_embeddings else set()
    extra = sorted(k for k in tensors if k not in names.values() and k not in ignorable and "rotary_emb" not in k)
    if extra:
        biases = [k for k in extra if k.endswith(".bias")]
        rule = "our model has no biases" if biases else "they have no counterpart in our TransformerLM"
        raise ValueError(f"checkpoint has tensors {(biases or extra)[:4]} ({len(extra)} unexpected in all); {rule}")
    missing = [theirs for theirs in names.values() if theirs not in tensors]
    if missing:
        raise ValueError(f"checkpoint lacks tensors {missing[:4]} ({len(missing)} missing in all)")
    inverse = torch.argsort(rope_to_hf(config.d_model // config.num_heads))
    out = {}
    for ours, theirs in names.items():
        w = tensors[theirs]
        out[ours] = permute_heads(w, config.num_heads, inverse) if _is_rotated(ours) else w
    if config.tie_embeddings:
        out["lm_head.weight"] = out["token_embeddings.weight"]
    return out


# --------------------------------------------------------------------------------------------------------------------
# Settings


def check_exportable(config: ModelConfig) -> None:
    """ValueError unless `config` is a Llama architecture: pre-norm, RoPE, SwiGLU, no QK-norm, no logit soft-cap
    (multi-head, no biases always). zero_init_proj is only an initialization: it exports."""
    rules = [
        ("norm", "pre", "Llama applies RMSNorm before attention and feed-forward (pre-norm)"),
        (
            "positions",
            "rope",
            "Llama encodes positions with RoPE only (NoPE or another scheme has no Llama equivalent)",
        ),
        (
            "ffn",
            "swiglu",
            "Llama's feed-forward is SwiGLU (gate_proj, up_proj, down_proj); an ungated one (SiLU, ReLU²) has no "
            "up_proj",
        ),
        ("qk_norm", False, "Llama has no RMSNorm on each head's q and k"),
        ("logit_softcap", None, "Llama does not soft-cap its logits"),
    ]
    for name, needed, why in rules:
        if getattr(config, name) != needed:
            raise ValueError(f"{name}={getattr(config, name)!r} cannot be exported: it must be {needed!r}; {why}")


def llama_config(config: ModelConfig, eos_token_id: int | None, dtype: str) -> dict[str, Any]:
    """config.json of transformers' LlamaConfig for `config`; written for transformers 4.x and 5.x alike (5.x
    reads `rope_parameters`, 4.x `rope_theta` and `torch_dtype`)."""
    check_exportable(config)
    theta = float(config.rope_theta)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.resolved_d_ff,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_heads,
        "head_dim": config.d_model // config.num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": float(config.norm_eps),
        "rope_theta": theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": None,  # our models see no beginning-of-sequence token
        "eos_token_id": eos_token_id,
        "pad_token_id": None,
        "torch_dtype": dtype,
    }


def model_config_from_llama(hf: dict[str, Any], context_length: int | None = None) -> ModelConfig:
    """Our ModelConfig for a Llama config.json dict; ValueError naming the setting when it cannot convert.

    `context_length` (default: max_position_embeddings) bounds the RoPE table and the sequences the model takes.
    """
    where = "config.json"
    model_type = hf.get("model_type")
    if model_type != "llama":
        raise ValueError(f"{where}: model_type={model_type!r}; only 'llama' (LlamaForCausalLM) checkpoints convert")
    heads = hf["num_attention_heads"]
    kv_heads = hf.get("num_key_value_heads") or heads
    if kv_heads != heads:
        raise ValueError(
            f"{where}: num_key_value_heads={kv_heads} != num_attention_heads={heads}: grouped-query attention "
            "does not convert; our attention has one key/value head per query head"
        )
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ValueError(f"{where}: {key}=true; our model has no biases")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(
            f"{where}: hidden_act={act!r}; our feed-forward is SwiGLU, silu(gate) * up, so it must be 'silu'"
        )
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    if head_dim * heads != hf["hidden_size"]:
        raise ValueError(
            f"{where}: head_dim={head_dim} × num_attention_heads={heads} != hidden_size={hf['hidden_size']}; "
            "our attention splits d_model evenly across the heads"
        )
    theta = _rope_theta(hf, where)
    vocab_size = hf["vocab_size"]
    if vocab_size > MAX_TOKEN_ID_RANGE:
        raise ValueError(
            f"{where}: vocab_size={vocab_size} exceeds {MAX_TOKEN_ID_RANGE}, the id range of our token files (uint32)"
        )
    return ModelConfig(
        vocab_size=vocab_size,
        context_length=context_length or hf.get("max_position_embeddings", 2048),
        d_model=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        d_ff=hf["intermediate_size"],
        rope_theta=theta,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
    )


def _rope_theta(hf: dict[str, Any], where: str) -> float:
    """rope_theta of a plain (unscaled, full-width) RoPE, from transformers 4.x or 5.x keys; ValueError otherwise."""
    scaling = hf.get("rope_scaling")
    params = hf.get("rope_parameters") or {}
    if scaling or params.get("rope_type", params.get("type", "default")) != "default":
        found = scaling or params
        raise ValueError(
            f"{where}: rope_scaling / rope_parameters = {found}; only plain RoPE (rope_type 'default', no scaling) "
            "converts: our rotary embedding has no frequency scaling"
        )
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"{where}: partial_rotary_factor={partial}; our RoPE rotates every feature of a head")
    return float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON: {e}") from None


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer: our (vocab, merges, special tokens) <-> Hugging Face tokenizer.json (a byte-level BPE)

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}


def tokenizer_json(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str]) -> dict:
    """tokenizer.json of the `tokenizers` library that encodes and decodes exactly as our Tokenizer does.

    Regular tokens are written through GPT-2's byte table (as in vocab.json); a special token is written as its
    own text under its own id, as an added token, which `tokenizers` splits off before the GPT-2 pre-tokenizer
    (longest match first, as ours).
    """
    special_ids = {s: i for i, t in vocab.items() for s in special_tokens if t == s.encode("utf-8")}
    missing = [s for s in special_tokens if s not in special_ids]
    if missing:
        raise ValueError(f"special tokens {missing} are not in the vocabulary")
    by_id = {i: s for s, i in special_ids.items()}
    model_vocab: dict[str, int] = {}
    for token_id, token in sorted(vocab.items()):
        key = by_id.get(token_id) or encode_token(token)
        if key in model_vocab:
            raise ValueError(f"vocab ids {model_vocab[key]} and {token_id} both hold {key!r}; tokens must be unique")
        model_vocab[key] = token_id
    added = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for s, i in sorted(special_ids.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": dict(_BYTE_LEVEL),
        "post_processor": dict(_BYTE_LEVEL),
        "decoder": dict(_BYTE_LEVEL),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": model_vocab,
            "merges": [[encode_token(a), encode_token(b)] for a, b in merges],
        },
    }


def tokenizer_from_json(data: dict, where: str = "tokenizer.json"):
    """(vocab, merges, special_tokens) of a byte-level BPE tokenizer.json; ValueError naming what does not convert.

    Our Tokenizer is GPT-2's scheme: no normalizer, GPT-2's pre-tokenizer pattern on bytes, BPE with no unknown
    token, special tokens split off first. Other schemes (SentencePiece, Llama 3's pattern) raise.
    """
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{where}: model type {model.get('type')!r}; only byte-level BPE converts")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ValueError(f"{where}: model.{key}={model[key]!r}; our BPE has no {key}")
    if model.get("byte_fallback"):
        raise ValueError(f"{where}: model.byte_fallback=true (a SentencePiece-style BPE); only byte-level BPE converts")
    if data.get("normalizer"):
        raise ValueError(f"{where}: normalizer {data['normalizer'].get('type')!r}; our tokenizer does not normalize")
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        raise ValueError(
            f"{where}: pre_tokenizer {json.dumps(pre)[:200]}; only ByteLevel with GPT-2's pattern (use_regex true, "
            "add_prefix_space false) converts"
        )
    for key in ("post_processor", "decoder"):
        kind = (data.get(key) or {}).get("type")
        if kind not in (None, "ByteLevel"):
            raise ValueError(f"{where}: {key} {kind!r}; only ByteLevel (or none) converts (ours adds no tokens)")
    special: dict[str, int] = {}
    for token in data.get("added_tokens") or []:
        flags = [k for k in ("single_word", "lstrip", "rstrip") if token.get(k)]
        if flags:
            raise ValueError(f"{where}: added token {token['content']!r} sets {flags}; ours match the exact text")
        special[token["content"]] = token["id"]
    vocab: dict[int, bytes] = {}
    for key, token_id in model["vocab"].items():
        vocab[token_id] = key.encode("utf-8") if special.get(key) == token_id else decode_token(key)
    for content, token_id in special.items():
        if vocab.setdefault(token_id, content.encode("utf-8")) != content.encode("utf-8"):
            raise ValueError(
                f"{where}: added token {content!r} has id {token_id}, which the BPE vocab gives another token"
            )
    pairs = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"{where}: a merge is not a pair of tokens: {next(p for p in pairs if len(p) != 2)!r}")
    merges = [(decode_token(a), decode_token(b)) for a, b in pairs]
    return vocab, merges, list(special)
