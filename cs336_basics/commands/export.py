"""`cs336-basics export`: a trained model and its tokenizer as a Hugging Face Llama directory.

    cs336-basics export runs/tiny --tokenizer tok/tiny --out hf/tiny
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('hf/tiny')"

RUN_DIR_OR_CHECKPOINT is a checkpoint (ckpt_*.pt) or a run directory (its newest checkpoint). The output loads with
transformers' AutoModelForCausalLM / AutoTokenizer and no extra code; see docs/hf.md. Needs the `hf` extra.
"""

import argparse
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a checkpoint and its tokenizer as a Hugging Face Llama directory (transformers loads it)",
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
    parser.add_argument("--out", required=True, metavar="HF_DIR", help="output directory (must not exist)")
    parser.add_argument(
        "--dtype", default="float32", help="dtype of the stored weights: float32 or bfloat16; default float32"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from cs336_basics.workflows.hf_format import MissingExtraError

    try:
        from cs336_basics.workflows.export import export_hf

        result = export_hf(args.source, args.out, args.tokenizer, args.dtype)
    except MissingExtraError as e:
        print(f"cs336-basics export: error: {e}", file=sys.stderr)
        return 2
    c = result["config"]
    print(
        f"exported {result['checkpoint']} -> {result['out']} (Llama: {c['num_hidden_layers']} layers, hidden "
        f"{c['hidden_size']}, vocab {c['vocab_size']}, {c['torch_dtype']}, eos id {result['eos_token_id']})"
    )
    return 0
