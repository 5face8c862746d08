"""`cs336-basics export`: a trained model and its tokenizer as a Hugging Face Llama directory or a llama.cpp GGUF file.

    cs336-basics export runs/tiny --tokenizer tok/tiny --out hf/tiny
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('hf/tiny')"
    cs336-basics export runs/tiny --tokenizer tok/tiny --out tiny.gguf --format gguf
    python -c "from llama_cpp import Llama; print(Llama('tiny.gguf')('once upon a time', temperature=0))"

RUN_DIR_OR_CHECKPOINT is a checkpoint (ckpt_*.pt) or a run directory (its newest checkpoint). The HF directory loads
with transformers' AutoModelForCausalLM / AutoTokenizer and no extra code (docs/hf.md; needs the `hf` extra); the
GGUF file runs in llama.cpp and the tools built on it (docs/gguf.md; needs the `gguf` extra).
"""

import argparse
import sys

FORMATS = ("hf", "gguf")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a checkpoint and its tokenizer as a Hugging Face Llama directory or a llama.cpp GGUF file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT", help="checkpoint file or run directory (newest)")
    parser.add_argument(
        "--tokenizer",
        default=None,
        metavar="DIR",
        help="tokenizer directory (from train-bpe); default SOURCE/tokenizer",
    )
    parser.add_argument(
        "--out", required=True, metavar="PATH", help="output directory (hf) or file (gguf); must not exist"
    )
    parser.add_argument(
        "--format",
        default="hf",
        choices=FORMATS,
        help="hf: a transformers Llama directory (default); gguf: one file for llama.cpp",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        help="dtype of the stored weights: hf float32 (f32) or bfloat16 (bf16); gguf f32, f16 or bf16; default f32",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from cs336_basics.workflows.hf_format import MissingExtraError

    try:
        if args.format == "gguf":
            from cs336_basics.workflows.export import export_gguf

            result = export_gguf(args.source, args.out, args.tokenizer, args.dtype or "f32")
        else:
            from cs336_basics.workflows.export import export_hf

            result = export_hf(args.source, args.out, args.tokenizer, args.dtype or "float32")
    except MissingExtraError as e:
        print(f"cs336-basics export: error: {e}", file=sys.stderr)
        return 2
    if args.format == "gguf":
        m = result["metadata"]
        print(
            f"exported {result['checkpoint']} -> {result['out']} (GGUF llama: {m['llama.block_count']} layers, "
            f"embedding {m['llama.embedding_length']}, vocab {m['llama.vocab_size']}, {result['dtype']}, "
            f"eos id {result['eos_token_id']})"
        )
        return 0
    c = result["config"]
    print(
        f"exported {result['checkpoint']} -> {result['out']} (Llama: {c['num_hidden_layers']} layers, hidden "
        f"{c['hidden_size']}, vocab {c['vocab_size']}, {c['torch_dtype']}, eos id {result['eos_token_id']})"
    )
    return 0
