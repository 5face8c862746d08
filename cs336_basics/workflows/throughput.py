"""Training throughput of the trainer's own step (`benchmarks/throughput.py`, `benchmarks/gpu_check.sh`).

Kept apart from the loop in train.py: this measures, it writes nothing.
"""

import time
from collections.abc import Callable

import torch

from cs336_basics.train import Run
from cs336_basics.train_config import TrainConfig


def measure_throughput(
    config: TrainConfig, warmup_steps: int = 5, seconds: float = 5.0, clock: Callable[[], float] = time.perf_counter
) -> dict:
    """Tokens/s (and MFU on known GPUs) of the trainer's own step on `config`: warmup, then timed steps.

    Nothing is written to config.out. Returns dict(tokens_per_s, mfu, steps, seconds, loss, device, dtype).
    Used by benchmarks/throughput.py. `clock=time.process_time` gives tokens per CPU-second of this process (with
    one torch thread: a measure that other processes sharing the CPU disturb far less than wall-clock time).
    """
    run = Run(config)
    for _ in range(warmup_steps):
        loss, _, _ = run.train_step()
    float(loss)
    _sync(run.device)
    t0, steps = clock(), 0
    while True:
        loss, _, _ = run.train_step()
        steps += 1
        if steps % 5 == 0:
            _sync(run.device)
            if clock() - t0 >= seconds:
                break
    _sync(run.device)
    elapsed = clock() - t0
    tokens_per_s = steps * config.tokens_per_step(run.dist.world_size) / elapsed
    return {
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * run.flops_per_token / run.peak_flops if run.peak_flops else None,
        "steps": steps,
        "seconds": elapsed,
        "loss": float(loss),
        "device": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else str(run.device),
        "dtype": str(run.dtype).removeprefix("torch."),
        "flops_per_token": run.flops_per_token,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
