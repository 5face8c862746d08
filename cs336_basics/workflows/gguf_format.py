"""llama.cpp's GGUF format for our model: tensor names, metadata and the tokenizer, both ways (`export`, `import`).

A GGUF file is one binary file: key/value metadata (the architecture's sizes, the tokenizer's tokens and merges),
then the tensors. llama.cpp's `llama` graph is our default architecture (pre-norm RMSNorm, RoPE, SwiGLU, no
biases), so a model converts by renaming its tensors, with no reordering at all:

- RoPE: the `llama` architecture uses llama.cpp's "normal" rotary mode, which rotates *adjacent* pairs
  (x[2k], x[2k+1]) of each head, exactly as ours does. (Hugging Face's Llama rotates the halves (x[k], x[k + D/2]);
  that is why llama.cpp's convert_hf_to_gguf.py permutes HF's q/k rows back, and why our HF export permutes them
  forward.) Measured, not assumed: tests/test_gguf.py runs the file in llama.cpp and compares logits, and the same
  file with the HF row order gives logits off by O(1).
- Shapes: GGUF lists a tensor's dimensions innermost first, so our (out, in) weight is stored as ne = [in, out],
  the layout llama.cpp's graph multiplies with; the gguf package reverses the numpy shape for us.
- The tokenizer is llama.cpp's `gpt2` model (byte-level BPE, tokens written through GPT-2's byte table as in
  vocab.json) with the `gpt-2` pre-tokenizer (GPT-2's split pattern, ours); special tokens are control tokens under
  their own text, which llama.cpp splits off before BPE (longest first, as ours), and <|endoftext|> is EOS.

The `gguf` package (published by the llama.cpp project) writes and reads the file; see docs/gguf.md.
"""

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cs336_basics.config import ModelConfig
from cs336_basics.tokenizer_files import decode_token, encode_token
from cs336_basics.workflows.hf_format import EOS_TOKEN, MAX_TOKEN_ID_RANGE, MissingExtraError

GGUF_EXTRA = "pip install 'cs336-basics[gguf]' (or, in a checkout: uv sync --extra gguf)"
ARCH = "llama"
TOKENIZER_MODEL = "gpt2"  # llama.cpp's byte-level BPE
TOKENIZER_PRE = "gpt-2"  # llama.cpp's name for GPT-2's pre-tokenizer pattern (src/llama-vocab.cpp)
# llama.cpp's token types (gguf.TokenType)
NORMAL, CONTROL, UNUSED = 1, 3, 5
# --dtype -> (torch dtype of the stored matrices, gguf's GGMLQuantizationType name, gguf's LlamaFileType name).
# Norm weights (1-D) stay float32 whatever the dtype, as llama.cpp's own converter keeps them.
GGUF_DTYPES = {
    "f32": (torch.float32, "F32", "ALL_F32"),
    "f16": (torch.float16, "F16", "MOSTLY_F16"),
    "bf16": (torch.bfloat16, "BF16", "MOSTLY_BF16"),
}
DTYPE_ALIASES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def require_gguf():
    """The `gguf` module, or MissingExtraError naming the extra to install."""
    try:
        import gguf
    except ImportError as e:
        raise MissingExtraError(f"GGUF conversion needs the 'gguf' package ({e}); {GGUF_EXTRA}") from e
    return gguf


def gguf_dtype(dtype: str) -> str:
    """f32, f16 or bf16 (float32, float16, bfloat16 are accepted too); ValueError otherwise."""
    key = DTYPE_ALIASES.get(dtype, dtype)
    if key not in GGUF_DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {list(GGUF_DTYPES)} (or {list(DTYPE_ALIASES)})")
    return key


# --------------------------------------------------------------------------------------------------------------------
# Tensor names


def gguf_names(num_layers: int, tie_embeddings: bool) -> dict[str, str]:
    """Our state-dict name -> llama.cpp's tensor name (gguf.TENSOR_NAMES for MODEL_ARCH.LLAMA). A tied model has
    no output.weight: llama.cpp then uses token_embd.weight as the output matrix."""
    names = {"token_embeddings.weight": "token_embd.weight", "ln_final.weight": "output_norm.weight"}
    if not tie_embeddings:
        names["lm_head.weight"] = "output.weight"
    for i in range(num_layers):
        for ours, theirs in (
            ("ln1", "attn_norm"),
            ("attn.q_proj", "attn_q"),
            ("attn.k_proj", "attn_k"),
            ("attn.v_proj", "attn_v"),
            ("attn.output_proj", "attn_output"),
            ("ln2", "ffn_norm"),
            ("ffn.w1", "ffn_gate"),  # silu(w1 x) * w3 x: w1 is the gate
            ("ffn.w3", "ffn_up"),
            ("ffn.w2", "ffn_down"),
        ):
            names[f"layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
    return names


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer: our (vocab, merges, special tokens) <-> tokenizer.ggml.{tokens, token_type, merges}


def gguf_vocab(
    vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str], vocab_size: int
) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) for llama.cpp's `gpt2` tokenizer, `vocab_size` entries long.

    Regular tokens go through GPT-2's byte table (as in vocab.json), special tokens are their own text with type
    CONTROL, and ids the tokenizer does not use (a model vocab_size above the tokenizer's) are "[PAD<id>]" with type
    UNUSED, as llama.cpp's converter writes them. Merges are "left right" in rank order.
    """
    special_ids = {i: s for i, t in vocab.items() for s in special_tokens if t == s.encode("utf-8")}
    missing = sorted(set(special_tokens) - set(special_ids.values()))
    if missing:
        raise ValueError(f"special tokens {missing} are not in the vocabulary")
    tokens, types, seen = [], [], {}
    for i in range(vocab_size):
        if i in special_ids:
            text, kind = special_ids[i], CONTROL
        elif i in vocab:
            text, kind = encode_token(vocab[i]), NORMAL
        else:
            text, kind = f"[PAD{i}]", UNUSED
        if text in seen:  # llama.cpp maps text -> id and asserts both directions agree
            raise ValueError(f"vocab ids {seen[text]} and {i} both hold {text!r}; llama.cpp needs unique tokens")
        seen[text] = i
        tokens.append(text)
        types.append(kind)
    return tokens, types, [f"{encode_token(a)} {encode_token(b)}" for a, b in merges]


def vocab_from_gguf(
    tokens: list[str], types: list[int], merges: list[str], where: str
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]], list[str]]:
    """(vocab, merges, special_tokens) from a `gpt2` GGUF tokenizer; the inverse of `gguf_vocab`.

    CONTROL and USER_DEFINED tokens become special tokens (their own text), UNUSED ones are left out of the vocab,
    NORMAL ones are decoded through GPT-2's byte table.
    """
    if len(types) < len(tokens):
        raise ValueError(f"{where}: {len(tokens)} tokens but only {len(types)} token types; each token needs one")
    vocab: dict[int, bytes] = {}
    special: list[str] = []
    for i, (text, kind) in enumerate(zip(tokens, types[: len(tokens)], strict=True)):
        if kind == UNUSED:
            continue
        if kind in (CONTROL, 4):  # 4: USER_DEFINED, an added token matched as written
            vocab[i] = text.encode("utf-8")
            special.append(text)
        elif kind == NORMAL:
            vocab[i] = decode_token(text)
        else:
            raise ValueError(
                f"{where}: token {i} ({text!r}) has token type {kind}; a byte-level BPE has only normal (1), "
                "control (3), user-defined (4) and unused (5) tokens"
            )
    pairs = [m.split(" ") for m in merges]
    bad = [m for m, p in zip(merges, pairs, strict=True) if len(p) != 2]
    if bad:
        raise ValueError(f"{where}: a merge is not two tokens separated by one space: {bad[0]!r}")
    return vocab, [(decode_token(a), decode_token(b)) for a, b in pairs], special


# --------------------------------------------------------------------------------------------------------------------
# Writing


def check_gguf_exportable(config: ModelConfig, eos_id: int | None) -> None:
    """ValueError unless llama.cpp's `llama` graph runs `config`: the HF export's rules, and an end-of-text token."""
    from cs336_basics.workflows.hf_format import check_exportable

    check_exportable(config)  # pre-norm, RoPE, SwiGLU
    if eos_id is None:
        raise ValueError(
            f"the tokenizer has no {EOS_TOKEN} special token: llama.cpp needs an end-of-generation token "
            f"(tokenizer.ggml.eos_token_id); train the tokenizer with --special-tokens '{EOS_TOKEN}'"
        )


def write_gguf(
    path: str | os.PathLike,
    state_dict: dict[str, Tensor],
    config: ModelConfig,
    tokenizer,
    eos_id: int,
    dtype: str = "f32",
    name: str = "cs336-basics",
) -> dict[str, Any]:
    """Write `state_dict` (our names) and `tokenizer` as a GGUF file at `path` (plainly: callers make it atomic).

    Returns the metadata written (general.architecture and the tokenizer's arrays apart).
    """
    gguf = require_gguf()
    dtype = gguf_dtype(dtype)
    torch_dtype, qtype, file_type = GGUF_DTYPES[dtype]
    check_gguf_exportable(config, eos_id)
    head_dim = config.d_model // config.num_heads
    meta = {
        "general.name": name,
        f"{ARCH}.context_length": config.context_length,
        f"{ARCH}.embedding_length": config.d_model,
        f"{ARCH}.block_count": config.num_layers,
        f"{ARCH}.feed_forward_length": config.resolved_d_ff,
        f"{ARCH}.attention.head_count": config.num_heads,
        f"{ARCH}.attention.head_count_kv": config.num_heads,
        f"{ARCH}.attention.layer_norm_rms_epsilon": float(config.norm_eps),
        f"{ARCH}.rope.freq_base": float(config.rope_theta),
        f"{ARCH}.rope.dimension_count": head_dim,
        f"{ARCH}.vocab_size": config.vocab_size,
        "general.file_type": int(gguf.LlamaFileType[file_type]),
        "tokenizer.ggml.model": TOKENIZER_MODEL,
        "tokenizer.ggml.pre": TOKENIZER_PRE,
        "tokenizer.ggml.eos_token_id": eos_id,
        # Our models never saw a beginning-of-sequence token, so none is added; BOS is still named (GPT-2's
        # convention: <|endoftext|>), since llama.cpp's gpt2 vocab otherwise takes id 11, a regular token, as BOS.
        "tokenizer.ggml.bos_token_id": eos_id,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": False,
    }
    tokens, types, merges = gguf_vocab(tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens, config.vocab_size)

    writer = gguf.GGUFWriter(str(path), ARCH)  # writes general.architecture
    for key, value in meta.items():  # llama.cpp reads these integers as uint32 and these floats as float32
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, value)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for ours, theirs in gguf_names(config.num_layers, config.tie_embeddings).items():
        w = state_dict[ours].detach().cpu()
        if w.dim() == 1 or torch_dtype == torch.float32:
            writer.add_tensor(theirs, w.float().contiguous().numpy())
        elif torch_dtype == torch.float16:
            writer.add_tensor(theirs, w.to(torch.float16).contiguous().numpy())
        else:  # numpy has no bfloat16: the raw 16-bit patterns, typed BF16 for the file
            bits = w.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
            writer.add_tensor(theirs, bits, raw_dtype=gguf.GGMLQuantizationType[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return meta


# --------------------------------------------------------------------------------------------------------------------
# Reading


def is_gguf(path: str | os.PathLike) -> bool:
    """True for a file that starts with GGUF's magic bytes."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def read_gguf(path: str | os.PathLike, context_length: int | None = None):
    """(ModelConfig, state dict of ours, (vocab, merges, special_tokens), metadata) from a llama GGUF file.

    Raises ValueError naming the setting that does not convert: another architecture, grouped-query attention,
    partial or scaled RoPE, biases, a tokenizer other than byte-level BPE with GPT-2's pattern, quantized tensors.
    `context_length` (default: llama.context_length) bounds our RoPE table.
    """
    gguf = require_gguf()
    where = str(path)
    reader = gguf.GGUFReader(path)
    meta = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.")}
    fields = reader.fields

    def get(key: str, default: Any = KeyError) -> Any:
        if key in fields:
            return fields[key].contents()
        if default is KeyError:
            raise ValueError(f"{where}: metadata {key!r} is missing")
        return default

    arch = get("general.architecture")
    if arch != ARCH:
        raise ValueError(f"{where}: general.architecture={arch!r}; only {ARCH!r} (llama.cpp's Llama graph) converts")
    heads = get(f"{ARCH}.attention.head_count")
    kv_heads = get(f"{ARCH}.attention.head_count_kv", heads)
    if kv_heads != heads:
        raise ValueError(
            f"{where}: {ARCH}.attention.head_count_kv={kv_heads} != head_count={heads}: grouped-query attention "
            "does not convert; our attention has one key/value head per query head"
        )
    d_model = get(f"{ARCH}.embedding_length")
    head_dim = d_model // heads
    for key in (f"{ARCH}.attention.key_length", f"{ARCH}.attention.value_length", f"{ARCH}.rope.dimension_count"):
        value = get(key, head_dim)
        if value != head_dim or head_dim * heads != d_model:
            raise ValueError(
                f"{where}: {key}={value} with embedding_length={d_model} and head_count={heads}; our attention splits "
                "d_model evenly across the heads and RoPE rotates every feature of a head"
            )
    scaling = get(f"{ARCH}.rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"{where}: {ARCH}.rope.scaling.type={scaling!r}; our RoPE has no frequency scaling")
    model_kind, pre = get("tokenizer.ggml.model"), get("tokenizer.ggml.pre", None)
    if model_kind != TOKENIZER_MODEL or pre != TOKENIZER_PRE:
        raise ValueError(
            f"{where}: tokenizer.ggml.model={model_kind!r}, tokenizer.ggml.pre={pre!r}; only byte-level BPE with "
            f"GPT-2's pattern ({TOKENIZER_MODEL!r}, {TOKENIZER_PRE!r}) converts: ours is exactly GPT-2's scheme"
        )
    tokens = get("tokenizer.ggml.tokens")
    types = get("tokenizer.ggml.token_type", [NORMAL] * len(tokens))
    vocab, merges, special = vocab_from_gguf(tokens, types, get("tokenizer.ggml.merges", []), where)

    tensors = {t.name: t for t in reader.tensors}
    vocab_size = get(f"{ARCH}.vocab_size", len(tokens))
    if vocab_size > MAX_TOKEN_ID_RANGE:
        raise ValueError(
            f"{where}: vocab_size={vocab_size} exceeds {MAX_TOKEN_ID_RANGE}, the id range of our token files (uint32)"
        )
    tie = "output.weight" not in tensors
    config = ModelConfig(
        vocab_size=vocab_size,
        context_length=context_length or get(f"{ARCH}.context_length"),
        d_model=d_model,
        num_layers=get(f"{ARCH}.block_count"),
        num_heads=heads,
        d_ff=get(f"{ARCH}.feed_forward_length"),
        rope_theta=_float32(get(f"{ARCH}.rope.freq_base", 10_000.0)),
        tie_embeddings=tie,
        norm_eps=_float32(get(f"{ARCH}.attention.layer_norm_rms_epsilon")),
    )
    names = gguf_names(config.num_layers, tie)
    extra = sorted(set(tensors) - set(names.values()) - {"rope_freqs.weight"})
    if extra:
        biases = [k for k in extra if k.endswith(".bias")]
        rule = "our model has no biases" if biases else "they have no counterpart in our TransformerLM"
        raise ValueError(f"{where}: tensors {(biases or extra)[:4]} ({len(extra)} unexpected in all); {rule}")
    missing = [theirs for theirs in names.values() if theirs not in tensors]
    if missing:
        raise ValueError(f"{where}: lacks tensors {missing[:4]} ({len(missing)} missing in all)")
    state_dict = {ours: _tensor(tensors[theirs], gguf, where) for ours, theirs in names.items()}
    if tie:
        state_dict["lm_head.weight"] = state_dict["token_embeddings.weight"]
    return config, state_dict, (vocab, merges, special), meta


def _float32(value: float) -> float:
    """The shortest decimal of a GGUF float32 (so 1e-6 comes back as 1e-06, not 9.99999997e-07)."""
    return float(str(np.float32(value)))


def _tensor(t, gguf, where: str) -> Tensor:
    """A float32 torch copy of one GGUF tensor (numpy shape: GGUF's dimensions reversed, so ours)."""
    kind = gguf.GGMLQuantizationType(t.tensor_type)
    shape = tuple(int(n) for n in reversed(t.shape))
    if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return torch.from_numpy(np.array(t.data, dtype=np.float32)).reshape(shape)
    if kind == gguf.GGMLQuantizationType.BF16:
        bits = np.ascontiguousarray(t.data).view(np.int16)
        return torch.from_numpy(bits.copy()).view(torch.bfloat16).float().reshape(shape)
    raise ValueError(
        f"{where}: tensor {t.name!r} is {kind.name}; only F32, F16 and BF16 tensors convert (a quantized model's "
        "weights are approximations: convert the unquantized GGUF or the Hugging Face checkpoint instead)"
    )
