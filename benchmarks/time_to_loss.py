"""Time to a fixed validation loss on real tokens: the repository's best GPU setting against the built-in peer.

    python benchmarks/time_to_loss.py --data data/gpu/train.bin            # on a GPU, about 3 minutes
    TRITON_INTERPRET=1 python benchmarks/time_to_loss.py --device cpu --tiny   # a check of the code paths only

Settings (same initial weights, same batches in the same order, same steps, same AdamW hyperparameters and
cosine schedule): `best` = cs336_basics TransformerLM with ModelConfig(kernels="triton"), bf16 autocast,
torch.compile, the package's AdamW; `builtin` = the torch built-in model of benchmarks/bench_model.py, bf16 autocast,
torch.compile, torch.optim.AdamW(fused=True). The token file is split: its last --val-frac is validation. The peer
runs first for --steps steps; the target is --target-loss, or by default the peer's final validation loss; then
`best` runs (up to 1.25 x the steps) until it reaches the target. Reported: training wall time (evaluations
excluded; the clock starts after step 1, which holds compilation) to the first evaluation at or below the target.
Prints a table; writes JSON to --json or $OUT/time_to_loss.json.
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the peer's loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import TINY, BuiltinLM  # noqa: E402 - the peer model, shared with the throughput benchmark

from cs336_basics.config import HANDOUT_MODEL  # noqa: E402 - the CS336 TinyStories model
from cs336_basics.data import load_tokens, read_windows  # noqa: E402
from cs336_basics.fileio import atomic_write_json  # noqa: E402
from cs336_basics.model import ModelConfig, TransformerLM  # noqa: E402
from cs336_basics.nn_utils import cross_entropy  # noqa: E402
from cs336_basics.optimizer import AdamW, get_lr_cosine_schedule  # noqa: E402


def _setting(name: str, config: ModelConfig, state: dict, device: torch.device, compile_: bool):
    hyper = dict(lr=0.0, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    if name == "best":
        model = TransformerLM(ModelConfig(**{**config.to_dict(), "kernels": "triton"}), device=device)
        opt, loss_fn = AdamW(model.parameters(), **hyper), cross_entropy
    else:
        model = BuiltinLM(config, device=device)
        fused = device.type == "cuda"
        opt, loss_fn = torch.optim.AdamW(model.parameters(), **hyper, fused=fused or None), F.cross_entropy
    model.load_state_dict(state)
    forward = torch.compile(model) if compile_ else model
    return model, forward, opt, loss_fn


def _run(name, config, state, data, val_starts, args, device, target, max_steps) -> dict:
    model, forward, opt, loss_fn = _setting(name, config, state, device, not args.no_compile)
    rng = np.random.default_rng(args.seed)  # the same batches for both settings
    n_train = int(len(data) * (1 - args.val_frac))
    t = config.context_length
    history, clock, start, reached = [], 0.0, None, None

    def loss_of(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = forward(x)
        return loss_fn(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    for step in range(1, max_steps + 1):
        lr = get_lr_cosine_schedule(step - 1, args.lr, args.lr / 10, args.warmup, args.steps)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = rng.integers(0, n_train - t - 1, args.batch_size)
        x, y = read_windows(data, starts, t, device)
        loss = loss_of(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 1 or step % args.eval_every == 0 or step == max_steps:
            float(loss.detach())  # wait for the step
            now = time.perf_counter()
            clock += 0.0 if start is None else now - start
            with torch.no_grad():
                val = float(np.mean([float(loss_of(*read_windows(data, s, t, device))) for s in val_starts]))
            history.append(dict(step=step, seconds=round(clock, 3), val_loss=val, lr=lr))
            if target is not None and val <= target and reached is None:
                reached = history[-1]
                break
            start = time.perf_counter()
    return dict(history=history, reached=reached, final=history[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="token file (cs336-basics tokenize output); --tiny: random")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny model and random tokens: a code-path check")
    parser.add_argument("--steps", type=int, default=1500, help="the peer's steps and the schedule length (1500)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (3e-3)")
    parser.add_argument("--warmup", type=int, default=100, help="linear warmup steps (100)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-batches", type=int, default=10)
    parser.add_argument("--val-frac", type=float, default=0.02)
    parser.add_argument("--target-loss", type=float, default=None, help="default: the peer's final val loss")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    model = {k: v for k, v in TINY.items() if k != "batch_size"} if args.tiny else dict(HANDOUT_MODEL)
    if args.tiny:
        args.steps, args.batch_size, args.eval_every, args.eval_batches, args.warmup = 6, 2, 3, 2, 2
    if args.data:
        data = load_tokens(args.data)
        top = int(data.max())
        if args.tiny:
            model = {**model, "vocab_size": top + 1}
        elif top >= model["vocab_size"]:
            parser.error(f"--data {args.data}: token id {top} >= vocab_size {model['vocab_size']}")
    elif args.tiny:
        data = np.random.default_rng(0).integers(0, model["vocab_size"], 20_000, dtype=np.uint16)
    else:
        parser.error("--data is required (a token file; see docs/gpu.md for the command that makes it)")
    config = ModelConfig(**model)
    n_train, t = int(len(data) * (1 - args.val_frac)), config.context_length
    val_rng = np.random.default_rng(12345)
    val_starts = [val_rng.integers(n_train, len(data) - t - 1, args.batch_size) for _ in range(args.eval_batches)]
    torch.manual_seed(args.seed)
    state = TransformerLM(config, device=device).state_dict()

    peer = _run("builtin", config, state, data, val_starts, args, device, args.target_loss, args.steps)
    target = args.target_loss if args.target_loss is not None else peer["final"]["val_loss"]
    if peer["reached"] is None:
        peer["reached"] = peer["final"] if peer["final"]["val_loss"] <= target else None
    best = _run("best", config, state, data, val_starts, args, device, target, math.ceil(1.25 * args.steps))
    out = dict(target_loss=target, tokens=len(data), data=args.data, device=str(device), builtin=peer, best=best)
    print(f"target validation loss {target:.4f} ({len(data):,} tokens, batch {args.batch_size} x {t})")
    for name, r in (("builtin", peer), ("best", best)):
        hit = r["reached"]
        when = f"{hit['seconds']:.1f} s at step {hit['step']}" if hit else "not reached"
        print(f"{name:<8} {when:<28} final val loss {r['final']['val_loss']:.4f} after {r['final']['step']} steps")
    if peer["reached"] and best["reached"] and best["reached"]["seconds"] > 0:
        print(f"speed-up to the target: {peer['reached']['seconds'] / best['reached']['seconds']:.2f}x")
    path = args.json or (Path(os.environ["OUT"]) / "time_to_loss.json" if os.environ.get("OUT") else None)
    if path:
        atomic_write_json(path, out)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
