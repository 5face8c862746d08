"""Import a Hugging Face Llama checkpoint (and its byte-level BPE tokenizer), or a llama.cpp GGUF file, as our
TransformerLM and Tokenizer.

    cs336-basics import hf/some-llama --out runs/imported
    cs336-basics import some-llama.gguf --out runs/imported
    cs336-basics generate --checkpoint runs/imported/ckpt_000000.pt --tokenizer runs/imported/tokenizer --prompt hi
    cs336-basics train --init-from runs/imported --train data/train.bin --val data/val.bin --out runs/finetuned

What converts: model_type "llama" with multi-head attention (num_key_value_heads == num_attention_heads), SiLU
(SwiGLU) feed-forward, no biases, plain RoPE; a tokenizer.json that is byte-level BPE with GPT-2's pattern.
Anything else raises ValueError naming the setting (see `hf.model_config_from_llama`, `hf.tokenizer_from_json`).
A GGUF file converts under the same rules, with float32, float16 or bfloat16 tensors (`gguf_format.read_gguf`).
"""

import os
from pathlib import Path

import torch

from cs336_basics.fileio import atomic_write_json, write_dir_atomically
from cs336_basics.model import TransformerLM
from cs336_basics.workflows.export import TOKENIZER_SUBDIR
from cs336_basics.workflows.hf_format import (
    from_hf_state_dict,
    model_config_from_llama,
    read_json,
    require_safetensors,
    tokenizer_from_json,
)

CHECKPOINT_NAME = "ckpt_000000.pt"  # an imported model is step 0 of its run directory


def load_hf(hf_dir: str | os.PathLike, context_length: int | None = None):
    """(TransformerLM in eval mode, Tokenizer) from a Llama directory (config.json, *.safetensors, tokenizer.json).

    `context_length` (default: config.json's max_position_embeddings) is the longest sequence the model takes.
    Raises ValueError naming the setting that does not convert, FileNotFoundError for a missing file.
    """
    from cs336_basics.tokenizer import Tokenizer

    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise NotADirectoryError(f"hf_dir={str(hf_dir)!r} is not a directory")
    hf_config = read_json(hf_dir / "config.json", "model config")
    config = model_config_from_llama(hf_config, context_length)
    vocab, merges, special_tokens = load_hf_tokenizer(hf_dir)
    tokenizer = Tokenizer(vocab, merges, special_tokens)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"{hf_dir}/tokenizer.json has ids up to {tokenizer.vocab_size - 1}, beyond the model's vocab_size="
            f"{config.vocab_size}: those tokens have no embedding"
        )
    state_dict = from_hf_state_dict(_read_tensors(hf_dir), config)
    model = TransformerLM(config)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:  # shape mismatches: the weights do not fit config.json
        raise ValueError(f"{hf_dir}: the weights do not match config.json: {e}") from None
    return model.eval(), tokenizer


def load_hf_tokenizer(hf_dir: str | os.PathLike):
    """(vocab, merges, special_tokens) from `hf_dir`/tokenizer.json; FileNotFoundError when there is none."""
    path = Path(hf_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"missing tokenizer: {str(path)!r} does not exist; a model converts only with its byte-level BPE "
            "tokenizer.json (transformers' save_pretrained of a fast tokenizer writes one)"
        )
    vocab, merges, special_tokens = tokenizer_from_json(read_json(path, "tokenizer"), str(path))
    tokens = set(vocab.values())
    missing = [b for b in range(256) if bytes([b]) not in tokens]
    if missing:
        raise ValueError(f"{path}: single-byte tokens {missing[:8]} are missing; byte-level BPE needs all 256")
    return vocab, merges, special_tokens


def load_gguf(path: str | os.PathLike, context_length: int | None = None):
    """(TransformerLM in eval mode, Tokenizer) from a llama.cpp GGUF file of the `llama` architecture.

    `context_length` (default: the file's llama.context_length) is the longest sequence the model takes. Raises
    ValueError naming the setting that does not convert (see `gguf_format.read_gguf`).
    """
    return _load_gguf(path, context_length)[:2]


def _load_gguf(path: str | os.PathLike, context_length: int | None):
    """`load_gguf` and the file's scalar metadata (for the run directory's config.json)."""
    from cs336_basics.tokenizer import Tokenizer
    from cs336_basics.workflows.gguf_format import read_gguf

    if not Path(path).is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    config, state_dict, (vocab, merges, special_tokens), meta = read_gguf(path, context_length)
    tokenizer = Tokenizer(vocab, merges, special_tokens)
    model = TransformerLM(config)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:  # shape mismatches: the tensors do not fit the metadata
        raise ValueError(f"{path}: the tensors do not match the file's llama.* metadata: {e}") from None
    return model.eval(), tokenizer, meta


def import_hf(hf_dir: str | os.PathLike, out: str | os.PathLike, context_length: int | None = None) -> dict:
    """Write a Llama directory, or a GGUF file, as a run directory `out` (new): ckpt_000000.pt, tokenizer/,
    config.json.

    `generate --checkpoint out/ckpt_000000.pt --tokenizer out/tokenizer`, `eval` and `train --init-from out` use
    it. Written in a temporary directory beside `out` and renamed. Returns {"out", "checkpoint", "model_config"}.
    """
    from cs336_basics.optimizer import AdamW
    from cs336_basics.serialization import save_checkpoint
    from cs336_basics.tokenizer_files import save_tokenizer
    from cs336_basics.workflows.gguf_format import is_gguf

    if is_gguf(hf_dir):
        model, tokenizer, source_config = _load_gguf(hf_dir, context_length)
        source_key = "gguf_metadata"
    elif Path(hf_dir).is_file():
        raise ValueError(
            f"source {str(hf_dir)!r} is a file but not a GGUF file (it does not start with b'GGUF'); pass a GGUF "
            "file or a Hugging Face Llama directory"
        )
    else:
        model, tokenizer = load_hf(hf_dir, context_length)
        source_key, source_config = "hf_config", read_json(Path(hf_dir) / "config.json", "model config")
    model_config = model.config.to_dict()

    def fill(tmp: Path) -> None:
        optimizer = AdamW(model.parameters())  # fresh: the checkpoint format holds one
        extra = {"imported_from": str(hf_dir), source_key: source_config}
        save_checkpoint(model, optimizer, 0, tmp / CHECKPOINT_NAME, config=model_config, extra=extra)
        save_tokenizer(tokenizer.vocab, tokenizer.merges, tmp / TOKENIZER_SUBDIR, tokenizer.special_tokens)
        meta = {
            "model_config": model_config,
            "imported_from": str(hf_dir),
            source_key: source_config,
            "torch_version": torch.__version__,
        }
        atomic_write_json(tmp / "config.json", meta)

    write_dir_atomically(out, fill)
    return {"out": str(out), "checkpoint": str(Path(out) / CHECKPOINT_NAME), "model_config": model_config}


def _read_tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors, of the shards listed in model.safetensors.index.json, or of
    pytorch_model.bin, on the CPU."""
    single, index, legacy = (
        hf_dir / "model.safetensors",
        hf_dir / "model.safetensors.index.json",
        hf_dir / "pytorch_model.bin",
    )
    if single.is_file() or index.is_file():
        load_file = require_safetensors().load_file
        if single.is_file():
            return load_file(str(single))
        shards = sorted(set(read_json(index, "weight index").get("weight_map", {}).values()))
        return {k: v for shard in shards for k, v in load_file(str(hf_dir / shard)).items()}
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"{str(hf_dir)!r} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )
