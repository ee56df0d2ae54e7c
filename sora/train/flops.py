"""Analytic training FLOPs of a DiT step on a packed batch (matmuls + attention).

Forward FLOPs = 2 * (matmul params touched per token) * tokens + attention scores/values, which
grow with each sample's own length (block-diagonal). Training = 3x forward (backward is 2x).
"""
from __future__ import annotations

import time

import torch


def dit_forward_flops(depth: int, width: int, in_dim: int, text_dim: int, mlp_ratio: float,
                      seqlens: list[int], ctx_lens: list[int]) -> int:
    n, m = sum(seqlens), sum(ctx_lens)
    hidden = int(width * mlp_ratio)
    per_token = (3 * width * width + width * width       # qkv + out proj
                 + width * width + width * width         # cross q + out proj
                 + 2 * width * hidden)                   # MLP
    per_layer = 2 * per_token * n + 2 * (2 * width * text_dim) * m   # cross k/v over text tokens
    attn = sum(4 * s * s * width for s in seqlens) + sum(4 * s * c * width for s, c in zip(seqlens, ctx_lens))
    embed = 2 * n * (in_dim * width * 2)                 # patch embed + final linear
    return depth * (per_layer + attn) + embed


def train_flops(*args, **kwargs) -> int:
    return 3 * dit_forward_flops(*args, **kwargs)


def measure_peak_flops(device: str = "cpu", size: int = 1024, dtype=torch.float32) -> float:
    """Achievable matmul FLOP/s on this device, measured (the MFU denominator on CPUs)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.3:
        a @ b
        reps += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * size ** 3 * reps / (time.perf_counter() - start)


# Dense bf16 tensor-core peaks (FLOP/s) for MFU on known GPUs.
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: str) -> tuple[float, str]:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, peak in GPU_PEAKS.items():
            if key in name:
                return peak, f"{name} datasheet bf16 dense"
        return measure_peak_flops(device, 8192, torch.bfloat16), f"{name} measured bf16 matmul"
    return measure_peak_flops(device), "CPU measured fp32 matmul"
