"""Where and how the code runs: the device, the dtype, torchrun's process group, a GPU's peak FLOP/s, the checkout.

One home for the runtime helpers that the trainer, `generate`, `eval`, sweeps and benchmarks share.
"""

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; otherwise the named device, which must exist on this machine.

    Raises ValueError naming the device when it is malformed or this machine does not have it.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return device_of(device)
    except RuntimeError as e:  # "cuda:3" on a one-GPU machine, "mps" off a Mac, or a malformed name
        raise ValueError(f"device={str(device)!r}: {e}") from e


def device_of(device: str | torch.device) -> torch.device:
    """torch.device(device), raising RuntimeError (as torch does) for a device this machine does not have."""
    device = torch.device(device)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index if device.index is not None else 0
        if index >= count:
            raise RuntimeError(f"device={str(device)!r} is not available: this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device={str(device)!r} is not available on this machine")
    return device


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 (each rank on its LOCAL_RANK GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), device


def autocast(device: torch.device, dtype: torch.dtype):
    """bfloat16 autocast on `device`, or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """ "auto" -> bfloat16 on a CUDA device that supports it, else float32; otherwise the named dtype."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return DTYPES[dtype]


# Dense (no sparsity) peak tensor-core throughput in FLOP/s, per the vendors' data sheets; matched against
# torch.cuda.get_device_name() in order, so the more specific names come first.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bfloat16": 989.5e12, "float32": 66.9e12}),
    ("H100 PCIe", {"bfloat16": 756.0e12, "float32": 51.2e12}),
    ("H100", {"bfloat16": 989.5e12, "float32": 66.9e12}),  # SXM / HBM3
    ("A100", {"bfloat16": 312.0e12, "float32": 19.5e12}),
]


def peak_flops(device_name: str, dtype: str) -> float | None:
    """Peak FLOP/s of a GPU named `device_name` for `dtype` ("bfloat16" | "float32"), or None when unknown."""
    for key, peaks in PEAK_FLOPS:
        if key.lower() in device_name.lower():
            return peaks.get(dtype)
    return None


def git_sha() -> str | None:
    """The commit of the package's checkout, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
