"""Export a trained model and its tokenizer as a Hugging Face Llama directory that transformers loads as is, or as
one GGUF file that llama.cpp runs as is.

    cs336-basics export runs/tiny --tokenizer tok/tiny --out hf/tiny
    >>> AutoModelForCausalLM.from_pretrained("hf/tiny"); AutoTokenizer.from_pretrained("hf/tiny")
    cs336-basics export runs/tiny --tokenizer tok/tiny --out tiny.gguf --format gguf
    >>> llama_cpp.Llama("tiny.gguf")

The directory holds config.json (a LlamaConfig), model.safetensors, generation_config.json, tokenizer.json and
tokenizer_config.json. The weights are renamed and the q/k rows reordered for Llama's RoPE layout (see
`hf_format`). The GGUF file holds llama.cpp's metadata, tokenizer and tensors, renamed only (see `gguf_format`).
"""

import os
from pathlib import Path

from cs336_basics.config import ModelConfig
from cs336_basics.fileio import atomic_write_json, atomic_write_path, write_dir_atomically
from cs336_basics.runtime import DTYPES
from cs336_basics.workflows.hf_format import (
    EOS_TOKEN,
    llama_config,
    require_safetensors,
    to_hf_state_dict,
    tokenizer_json,
)

TOKENIZER_SUBDIR = "tokenizer"  # an imported run directory keeps its tokenizer here


def export_hf(
    source: str | os.PathLike,
    out: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    dtype: str = "float32",
) -> dict:
    """Write `source` (a checkpoint, or a run directory: its newest checkpoint) as a Llama directory at `out`.

    `tokenizer_dir` (a train-bpe directory; default `source/tokenizer` when it exists) is written as
    tokenizer.json, with <|endoftext|> as the EOS token when it is a special token. `out` must not exist; it is
    filled in a temporary directory beside it and renamed, so a failed export leaves nothing behind.
    Returns {"out", "checkpoint", "config" (the LlamaConfig dict), "eos_token_id"}.
    """
    dtype = {"f32": "float32", "bf16": "bfloat16"}.get(dtype, dtype)  # the GGUF export's short names
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {list(DTYPES)}")
    safetensors_torch = require_safetensors()
    checkpoint, config, weights, tokenizer, eos_id = _load_for_export(source, tokenizer_dir)
    hf_config = llama_config(config, eos_id, dtype)  # raises for settings Llama cannot express
    tensors = {name: w.to(DTYPES[dtype]) for name, w in to_hf_state_dict(weights, config).items()}
    token_json = tokenizer_json(tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens)

    def fill(tmp: Path) -> None:
        atomic_write_json(tmp / "config.json", hf_config)
        atomic_write_json(tmp / "generation_config.json", _generation_config(eos_id))
        safetensors_torch.save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "tokenizer.json", token_json)
        atomic_write_json(tmp / "tokenizer_config.json", _tokenizer_config(config, tokenizer.special_tokens))

    write_dir_atomically(out, fill)
    return {"out": str(out), "checkpoint": str(checkpoint), "config": hf_config, "eos_token_id": eos_id}


def export_gguf(
    source: str | os.PathLike,
    out: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    dtype: str = "f32",
) -> dict:
    """Write `source` (a checkpoint, or a run directory: its newest checkpoint) as a llama.cpp GGUF file `out`.

    `dtype` (f32, f16 or bf16) is that of the weight matrices; norm weights stay f32. `tokenizer_dir` is as in
    `export_hf`; its <|endoftext|> becomes llama.cpp's EOS. `out` must not exist; it is written beside itself under a
    temporary name and renamed, so a failed export leaves nothing behind.
    Returns {"out", "checkpoint", "metadata" (the scalar keys written), "eos_token_id", "dtype"}.
    """
    from cs336_basics.workflows.gguf_format import check_gguf_exportable, gguf_dtype, require_gguf, write_gguf

    dtype = gguf_dtype(dtype)
    require_gguf()
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"out={str(out)!r} already exists; choose a new file name or delete it")
    checkpoint, config, weights, tokenizer, eos_id = _load_for_export(source, tokenizer_dir)
    check_gguf_exportable(config, eos_id)
    name = Path(source).name if Path(source).is_dir() else Path(checkpoint).parent.name
    meta: dict = {}

    def write(tmp: Path) -> None:
        meta.update(write_gguf(tmp, weights, config, tokenizer, eos_id, dtype, name=name or "cs336-basics"))

    atomic_write_path(out, write)
    return {"out": str(out), "checkpoint": str(checkpoint), "metadata": meta, "eos_token_id": eos_id, "dtype": dtype}


def _load_for_export(source: str | os.PathLike, tokenizer_dir: str | os.PathLike | None):
    """(checkpoint path, ModelConfig, weights, Tokenizer, id of <|endoftext|> or None), checked."""
    from cs336_basics.checkpoints import read_model_checkpoint, resolve_checkpoint
    from cs336_basics.tokenizer import Tokenizer

    checkpoint = resolve_checkpoint(source, what="source")
    config, weights = read_model_checkpoint(checkpoint, what="source")
    tokenizer_dir = _find_tokenizer(source, tokenizer_dir)
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"the tokenizer in {str(tokenizer_dir)!r} has {tokenizer.vocab_size} ids but the model's vocab_size is "
            f"{config.vocab_size}: ids from {config.vocab_size} on have no embedding; export the model's own tokenizer"
        )
    eos_id = tokenizer.encode(EOS_TOKEN)[0] if EOS_TOKEN in tokenizer.special_tokens else None
    return checkpoint, config, weights, tokenizer, eos_id


def _find_tokenizer(source: str | os.PathLike, tokenizer_dir: str | os.PathLike | None) -> Path:
    if tokenizer_dir is None:
        candidate = Path(source) / TOKENIZER_SUBDIR
        if not candidate.is_dir():
            raise FileNotFoundError(
                f"no tokenizer: pass tokenizer_dir (--tokenizer DIR, the directory train-bpe wrote); "
                f"{str(candidate)!r} does not exist"
            )
        return candidate
    if not Path(tokenizer_dir).is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(tokenizer_dir)!r} does not exist")
    return Path(tokenizer_dir)


def _generation_config(eos_id: int | None) -> dict:
    # pad = eos: transformers pads finished rows of a batch with it (and otherwise warns that none is set)
    return {"bos_token_id": None, "eos_token_id": eos_id, "pad_token_id": eos_id}


def _tokenizer_config(config: ModelConfig, special_tokens: list[str]) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",  # reads tokenizer.json as written
        "model_max_length": config.context_length,
        "eos_token": EOS_TOKEN if EOS_TOKEN in special_tokens else None,
        "bos_token": None,
        "unk_token": None,
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,  # decode must give back the text exactly, as ours does
    }
