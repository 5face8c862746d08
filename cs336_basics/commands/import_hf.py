"""`cs336-basics import`: a Hugging Face Llama directory, or a llama.cpp GGUF file, as a run directory of ours.

    cs336-basics import hf/some-llama --out runs/imported
    cs336-basics import some-llama.gguf --out runs/imported
    cs336-basics generate --checkpoint runs/imported/ckpt_000000.pt --tokenizer runs/imported/tokenizer --prompt hi
    cs336-basics train --init-from runs/imported --train data/train.bin --val data/val.bin --out runs/finetuned

HF_DIR holds config.json (model_type llama, num_key_value_heads == num_attention_heads, silu, no biases, plain
RoPE), model.safetensors (or shards) and a byte-level BPE tokenizer.json. See docs/hf.md. Needs the `hf` extra.
A GGUF file (architecture llama, tokenizer gpt2 / gpt-2, F32, F16 or BF16 tensors) converts under the same rules;
see docs/gguf.md. Needs the `gguf` extra.
"""

import argparse
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "import",
        help="convert a Hugging Face Llama directory or a GGUF file (weights and tokenizer) into a run directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "hf_dir",
        metavar="HF_DIR_OR_GGUF",
        help="directory with config.json, *.safetensors, tokenizer.json; or a .gguf file",
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to create (must not exist)")
    parser.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="longest sequence the model takes (its RoPE table); default config.json's max_position_embeddings "
        "(GGUF: llama.context_length)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from cs336_basics.workflows.hf_format import MissingExtraError

    if args.context_length is not None and args.context_length <= 0:
        raise ValueError(f"--context-length={args.context_length} must be a positive integer")
    try:
        from cs336_basics.workflows.import_hf import import_hf

        result = import_hf(args.hf_dir, args.out, args.context_length)
    except MissingExtraError as e:
        print(f"cs336-basics import: error: {e}", file=sys.stderr)
        return 2
    c = result["model_config"]
    print(
        f"imported {args.hf_dir} -> {result['checkpoint']} and {result['out']}/tokenizer ({c['num_layers']} layers, "
        f"d_model {c['d_model']}, vocab {c['vocab_size']}, context {c['context_length']})"
    )
    return 0
