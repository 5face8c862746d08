"""`cs336-basics model-info`: the handout's accounting (parameters, FLOPs, memory) of a model configuration."""

import argparse
import dataclasses
import json

from cs336_basics.commands._flags import add_dataclass_flags


def add_parser(subparsers) -> None:
    from cs336_basics.train_config import TrainConfig

    parser = subparsers.add_parser(
        "model-info",
        help="parameter count, FLOPs per token and training memory of a model configuration",
        description="Print the CS336 handout's accounting for a model: parameters, matmul FLOPs per token for the "
        "forward and backward passes, and float32 AdamW memory (parameters, gradients, optimizer state, "
        "activations) for one batch.",
    )
    add_dataclass_flags(parser, TrainConfig, groups=("model",))
    batch = {f.name: f for f in dataclasses.fields(TrainConfig)}["batch_size"]
    parser.add_argument(
        "--batch-size", type=int, default=batch.default, help=f"sequences per batch; default {batch.default}"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cs336_basics.config import ModelConfig
    from cs336_basics.model_info import model_report

    config = ModelConfig.from_settings(vars(args))
    report = model_report(config, args.batch_size)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    p, f, m = report["parameters"], report["flops_per_token"], report["memory_bytes"]
    print(f"parameters: {p['total']:,} ({p['non_embedding']:,} without the input embedding)")
    print(f"  per layer {p['per_layer']:,}; embedding {p['embedding']:,}; lm_head {p['lm_head']:,}")
    print(f"FLOPs per token (seq {config.context_length}): forward {f['forward']['total'] / 1e6:.2f} M")
    for part in ("attention_projections", "attention_scores_and_values", "feed_forward", "lm_head"):
        share = f["forward"][part] / f["forward"]["total"]
        print(f"  {part:28s} {f['forward'][part] / 1e6:10.2f} M  ({share:.1%})")
    print(f"  backward {f['backward'] / 1e6:.2f} M; training (fwd + bwd) {f['training'] / 1e6:.2f} M")
    print(f"memory for batch {args.batch_size} × {config.context_length} (float32 AdamW):")
    for part in ("parameters", "gradients", "optimizer_state", "activations", "total"):
        print(f"  {part:16s} {m[part] / 2**30:10.3f} GiB")
    return 0
