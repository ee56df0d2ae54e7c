"""Analytic cost model of a DiT training step on a packed batch: FLOPs, memory, communication.

One model serves the trainer's MFU, the benchmarks and `sora plan`. It is validated in
`tests/test_flops.py`: FLOPs exactly against `torch.utils.flop_counter.FlopCounterMode` on the real
DiT / TextToVideo (forward + backward, with and without activation checkpointing), activation
memory against the bytes autograd actually saves, and peak memory against a tracked CPU step.

FLOPs: every matmul of the model (2*m*k*n each), listed once in `_matmuls`; attention per sample
(block-diagonal, so it grows with each sample's *own* length, not the pack's). Backward is 2x a
matmul's forward when its input needs a gradient and 1x when only the weight does (the patch
embedding reads data). Attention backward is 2x forward for the math path (softmax materialised)
and 2.5x for flash-style kernels that recompute the scores. Conventions:
  - `StepFlops.model`:    forward + backward without any recomputation (MFU, as Megatron/PaLM)
  - `StepFlops.executed`: what the hardware runs, incl. score recompute and checkpoint recompute
                          (hardware FLOPs utilisation, and what FlopCounterMode counts)

Memory: bytes autograd saves for backward, itemised per token of each block for the reference
(plain-torch) ops (see `_block_saved_bytes_per_token`), plus attention terms that grow with
sample length on the math path; parameters, gradients and Adam states sharded by ZeRO-3.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from sora.models.dit import FRAME_DIM, DiTArch   # the architecture switches (Wan's or ours)


# ---------------------------------------------------------------- the model's shape

@dataclass(frozen=True)
class DiTShape:
    """What the cost model needs to know about a DiT (and a trainable text encoder, if any)."""
    depth: int
    width: int
    heads: int
    in_dim: int                  # latent channels * pt * ph * pw
    text_dim: int                # width of the text features the DiT cross-attends to
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    text_layers: int = 0         # layers of a text encoder trained with the DiT (hash encoder); 0 = frozen
    text_mlp_ratio: float = 4.0
    arch: DiTArch = DiTArch()    # Wan's switches: explicit FFN width, text MLP, no pooled text / frame embedding
    out_dim: int = 0             # values per output token (0: in_dim)

    @property
    def hidden(self) -> int:
        return self.arch.ffn_dim or int(self.width * self.mlp_ratio)

    @property
    def out(self) -> int:
        return self.out_dim or self.in_dim

    @property
    def ctx_dim(self) -> int:
        """Width of the rows cross-attention reads: the text MLP's output, else the features."""
        return self.width if self.arch.text_mlp else self.text_dim

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @classmethod
    def from_config(cls, cfg) -> "DiTShape":
        from sora.models.t2v import dit_kwargs_of_config   # the DiT the trainer builds (model.pretrained's, if set)

        trainable_text = cfg.text.encoder == "hash"
        text_dim = cfg.text.dim if trainable_text else T5_DIMS.get(cfg.text.path.rstrip("/").split("/")[-1], 4096)
        kw = dit_kwargs_of_config(cfg, text_dim)
        arch, p = kw.get("arch", DiTArch()), math.prod(kw["patch"])
        return cls(kw["depth"], kw["width"], kw["heads"], kw["channels"] * p, kw["text_dim"], kw.get("mlp_ratio", 4.0),
                   kw["qk_norm"], cfg.text.layers if trainable_text else 0, arch=arch,
                   out_dim=(arch.out_channels or kw["channels"]) * p)

    @classmethod
    def from_size(cls, size: str, latent_channels: int = 16, patch=(1, 2, 2), text_dim: int = 4096) -> "DiTShape":
        from sora.models.dit import DIT_SIZES

        d = DIT_SIZES[size]
        return cls(d["depth"], d["width"], d["heads"], latent_channels * math.prod(patch), text_dim)

    def dit_params(self) -> int:
        """Exact parameter count of `sora.models.dit.DiT` (weights + biases + norms + tables)."""
        w, h, dh, dt, a = self.width, self.hidden, self.head_dim, self.text_dim, self.arch
        lin = lambda i, o: i * o + o  # noqa: E731
        qk = 2 * (w if a.qk_norm_across_heads else dh) if self.qk_norm else 0
        block = (lin(w, 3 * w) + lin(w, w) + qk                    # self-attention
                 + (2 * w if a.cross_norm else 0)                  # cross_norm (affine LayerNorm)
                 + lin(w, w) + lin(self.ctx_dim, 2 * w) + lin(w, w) + qk   # cross-attention
                 + lin(w, h) + lin(h, w)                           # MLP
                 + 6 * w)                                          # adaLN table
        outer = (lin(self.in_dim, w) + lin(a.t_freq_dim, w) + lin(w, w)   # patch embedding, t-MLP
                 + (lin(FRAME_DIM, w) if a.frame_embed else 0)
                 + (w if a.given == "embed" else 0)                # given-token embedding
                 + (2 * dt + lin(dt, w) if a.pooled_text else 0)   # text pool
                 + (lin(dt, w) + lin(w, w) if a.text_mlp else 0)   # text MLP
                 + lin(w, 6 * w)                                   # adaLN-single
                 + 2 * w + lin(w, self.out))                       # final layer
        return self.depth * block + outer

    def block_params(self) -> int:
        return (self.dit_params() - dataclasses.replace(self, depth=0).dit_params()) // max(1, self.depth)


T5_DIMS = {"t5-v1_1-xxl": 4096, "t5-v1_1-xl": 2048, "t5-v1_1-large": 1024, "t5-v1_1-base": 768, "t5-v1_1-small": 512}


# ---------------------------------------------------------------- FLOPs

@dataclass
class StepFlops:
    forward: int              # matmuls + attention, forward
    backward: int             # as executed (attention per `attention` path)
    recompute: int            # forward recomputed by activation checkpointing
    attention_forward: int    # the part of `forward` that is attention scores/values
    attention_recompute: int  # score recomputation inside flash-style backward kernels

    @property
    def model(self) -> int:
        """Model FLOPs (the MFU numerator): no recomputation of any kind."""
        return self.forward + self.backward - self.attention_recompute

    @property
    def executed(self) -> int:
        """Hardware FLOPs (the HFU numerator; what a FLOP counter sees)."""
        return self.forward + self.backward + self.recompute


def _matmuls(s: DiTShape, n: int, m: int, b: int, ctx_grad: bool, text_tokens: int) -> tuple[list, list]:
    """(outside-block, per-block) matmuls as (rows, in, out, input_needs_grad)."""
    w, h, a = s.width, s.hidden, s.arch
    outside = [
        (b, a.t_freq_dim, w, False), (b, w, w, True),              # timestep MLP (sinusoids need no grad)
        (b, w, 6 * w, True),                                       # adaLN-single
        (n, s.in_dim, w, False),                                   # patch embedding reads data
        (n, w, s.out, True),                                       # final linear
    ]
    if a.pooled_text:
        outside.append((b, s.text_dim, w, True))                   # text pool (after an affine LayerNorm)
    if a.frame_embed:
        outside.append((n, FRAME_DIM, w, False))                   # frame embedding reads data
    if a.text_mlp:                                                 # caption rows -> width, once
        outside += [(m, s.text_dim, w, ctx_grad), (m, w, w, True)]
        ctx_grad = True                                            # cross-attention reads the MLP's output
    dt, th = s.text_dim, int(s.text_dim * s.text_mlp_ratio)
    for _ in range(s.text_layers):                                 # text encoder trained with the DiT
        outside += [(text_tokens, dt, 3 * dt, True), (text_tokens, dt, dt, True),
                    (text_tokens, dt, th, True), (text_tokens, th, dt, True)]
    block = [(n, w, 3 * w, True), (n, w, w, True),                 # qkv, self proj
             (n, w, w, True), (m, s.ctx_dim, 2 * w, ctx_grad), (n, w, w, True),   # cross q, kv, proj
             (n, w, h, True), (n, h, w, True)]                     # MLP
    return outside, block


def step_flops(s: DiTShape, seqlens: list[int], ctx_lens: list[int], checkpointing: bool = False,
               attention: str = "math", ctx_requires_grad: bool | None = None) -> StepFlops:
    """FLOPs of one training step (forward + backward) on a packed batch.

    seqlens: tokens of each sample; ctx_lens: text tokens of each sample (same order).
    attention: "math" (scores materialised, backward 2x) or "flash" (backward recomputes scores: 2.5x).
    ctx_requires_grad: whether the text features carry a gradient (default: a text encoder is trained).
    """
    if attention not in ("math", "flash"):
        raise ValueError(f"attention must be 'math' or 'flash', got {attention!r}")
    if len(seqlens) != len(ctx_lens):
        raise ValueError(f"{len(seqlens)} samples but {len(ctx_lens)} caption lengths")
    if ctx_requires_grad is None:
        ctx_requires_grad = s.text_layers > 0
    n, m, b = sum(seqlens), sum(ctx_lens), len(seqlens)
    outside, block = _matmuls(s, n, m, b, ctx_requires_grad, m)

    def fwd_bwd(mms):
        f = sum(2 * r * i * o for r, i, o, _ in mms)
        return f, sum(2 * r * i * o * (2 if g else 1) for r, i, o, g in mms)

    of, ob = fwd_bwd(outside)
    bf, bb = fwd_bwd(block)
    # Attention: QK^T and PV, each 2*s*s_k*width FLOPs per sample (all heads together).
    attn_block = sum(4 * q * q * s.width + 4 * q * c * s.width for q, c in zip(seqlens, ctx_lens))
    attn_text = s.text_layers * sum(4 * c * c * s.text_dim for c in ctx_lens)
    bwd_factor = 2.5 if attention == "flash" else 2.0
    attn_fwd = s.depth * attn_block + attn_text
    forward = of + s.depth * bf + attn_fwd
    backward = ob + s.depth * bb + int(bwd_factor * attn_fwd)
    recompute = s.depth * (bf + attn_block) if checkpointing else 0
    return StepFlops(forward, backward, recompute, attn_fwd, int((bwd_factor - 2.0) * attn_fwd))


def attention_path(attention_fn, device: str = "cpu") -> str:
    """"flash" if `attention_fn` (varlen convention) dispatches to a fused SDPA kernel that
    recomputes scores in backward, "math" if it materialises them (bmm + softmax)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class _Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    q = torch.randn(3, 2, 8, device=device)
    cu = torch.tensor([0, 3], dtype=torch.int32, device=device)
    with _Ops():
        attention_fn(q, q, q, cu, cu, 3, 3)
    if any("bmm" in f or "softmax" in f for f in seen):
        return "math"
    return "flash"


def flop_counter(**kwargs):
    """`FlopCounterMode` that also counts PyTorch's CPU fused attention (not registered upstream),
    with the same formulas upstream uses for the CUDA flash kernel."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

    aten = torch.ops.aten
    mapping = {}
    for name, fn in (("_scaled_dot_product_flash_attention_for_cpu", sdpa_flop),
                     ("_scaled_dot_product_flash_attention_for_cpu_backward", sdpa_backward_flop)):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = _shape_wrapper(fn)
    return FlopCounterMode(display=False, custom_mapping=mapping, **kwargs)


def _shape_wrapper(fn):
    def shapes(*args, out_shape=None, **kwargs):
        to_shape = lambda a: tuple(a.shape) if isinstance(a, torch.Tensor) else a  # noqa: E731
        args = [to_shape(a) for a in args]
        if fn.__name__ == "sdpa_backward_flop":     # cpu backward: (grad_out, q, k, v, ...)
            return fn(*args[:4])
        return fn(*args[:3])
    shapes._get_raw = True  # receive the tensors: upstream's wrapper maps them to shapes otherwise
    return shapes


# ---------------------------------------------------------------- memory

BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


def _block_saved_bytes_per_token(s: DiTShape, act: int, attention: str = "math") -> float:
    """Bytes autograd keeps per token of one DiT block on the reference ops, apart from the
    terms that grow with sample length (see `activation_bytes`). act = bytes of the activation dtype.

    adaLN (x2):      LayerNorm input, its output, (1 + scale[sid]), the modulated output     8W
    self-attention:  qkv output 3W, q/k RMSNorm outputs 2W, attention output W,
                     projection output W, gate[sid] W                                      8W
    attention core:  math: the scaled q and k^T (2W); flash: rotated q, k and the kernel's
                     own output (3W)                                                       2-3W
    cross-attention: LayerNorm input, output, q, q RMSNorm output, scaled q (math) or the
                     kernel output (flash), attention output                                6W
    MLP:             fc1 output, GELU output (2 x hidden), fc2 output W, gate[sid] W        2W + 2h
    RoPE:            cos/sin tables for q and k (2 x Dh/2 each)
    fp32 statistics: LayerNorm mean + rstd (3 norms), RMSNorm rsqrt (3 per head), flash LSE
    int64:           sample index per token (the block's, and each of the two adaLN calls')
    bf16/fp16 only:  RMSNorm upcasts keep an fp32 copy of q, k and the cross q (3W fp32)
    """
    w, h = s.width, s.hidden
    core = 3 * w if attention == "flash" else 2 * w
    per = (8 * w + 8 * w + core + 6 * w + 2 * w + 2 * h) * act
    per += 2 * s.head_dim * act                                   # RoPE cos/sin
    per += 3 * 2 * 4 + 3 * 8                                      # LayerNorm stats, sample index
    if s.qk_norm:
        per += 3 * s.heads * 4
        if act != 4:
            per += 3 * w * 4
    else:
        per -= 3 * w * act                                        # no RMSNorm outputs
    if attention == "flash":
        per += 2 * s.heads * 4                                    # log-sum-exp: self + cross
    return per


def activation_bytes(s: DiTShape, seqlens: list[int], ctx_lens: list[int], act_bytes: int = 4,
                     checkpointing: bool = False, attention: str = "math") -> int:
    """Bytes saved for backward by one forward pass of the DiT (what the backward pass needs).

    The math attention path (the plain-torch reference) also keeps, per sample and block, the
    softmax [H, s, s + c]: it grows with the square of each sample's length. Flash-style kernels
    keep only a log-sum-exp per head: linear in length.
    With checkpointing only each block's input survives the forward; one block's activations
    are rebuilt at a time during backward.
    """
    n, m = sum(seqlens), sum(ctx_lens)
    w = s.width
    per_tok = _block_saved_bytes_per_token(s, act_bytes, attention)
    quad = 0 if attention == "flash" else sum(s.heads * q * (q + c) for q, c in zip(seqlens, ctx_lens)) * act_bytes
    # per text token: kv output 2W, k RMSNorm output W, scaled k^T (math only)
    per_ctx = (2 * w + (w if s.qk_norm else 0) + (w if attention == "math" else 0)) * act_bytes
    if s.qk_norm:
        per_ctx += s.heads * 4 + (w * 4 if act_bytes != 4 else 0)
    block = per_tok * n + quad + per_ctx * m
    # outside the blocks: data + frame features + final adaLN (LN in/out, 1+scale, output) + stats
    outside = n * ((s.in_dim + FRAME_DIM + 4 * w) * act_bytes + 2 * 4 + 8) + m * s.text_dim * act_bytes
    if checkpointing:
        return int(outside + s.depth * n * w * act_bytes + block)
    return int(outside + s.depth * block)


def backward_transient_bytes(s: DiTShape, seqlens: list[int], ctx_lens: list[int], act_bytes: int = 4,
                             attention: str = "math") -> int:
    """Short-lived gradient buffers at the peak of backward: gradients of the running activations
    (a few [N, hidden]) and, on the math path, the gradient of the largest sample's score matrix
    and of its softmax ([H, s, s] twice)."""
    n = sum(seqlens)
    grads = n * (s.hidden + 3 * s.width) * act_bytes
    if attention == "math" and seqlens:
        smax = max(seqlens)
        grads += 2 * s.heads * smax * smax * act_bytes
    return grads


def peak_bytes(s: DiTShape, seqlens: list[int], ctx_lens: list[int], state: "StateBytes", act_bytes: int = 4,
               checkpointing: bool = False, attention: str = "math", grads_live: bool = True) -> int:
    """Peak bytes of one training step: model states + activations + backward temporaries.

    On the math attention path the peak falls in the last block's self-attention backward, when
    the final layer's and that block's later activations (cross-attention, second adaLN, MLP) are
    already freed. grads_live: gradients are allocated before backward (DeepSpeed ZeRO keeps
    its gradient partitions); plain PyTorch creates them during backward (False).
    """
    n, w = sum(seqlens), s.width
    act = activation_bytes(s, seqlens, ctx_lens, act_bytes, checkpointing, attention)
    if attention == "math":
        act -= n * (4 * w * act_bytes + 16)                                  # final layer
        act -= n * (12 * w + 2 * s.hidden) * act_bytes                       # block tail
        act -= sum(s.heads * q * c for q, c in zip(seqlens, ctx_lens)) * act_bytes
    states = state.params + state.optimizer + state.gathered + (state.grads if grads_live else 0)
    return int(states + act + backward_transient_bytes(s, seqlens, ctx_lens, act_bytes, attention))


@dataclass
class StateBytes:
    """Model states per GPU under ZeRO (stage 3 shards all three over `world` ranks)."""
    params: int
    grads: int
    optimizer: int
    gathered: int = 0       # full-precision layers gathered at once by ZeRO-3 during fwd/bwd

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.gathered


def zero3_state_bytes(num_params: int, world: int, bf16: bool = True, stage: int = 3,
                      layer_params: int = 0, gathered_layers: int = 2) -> StateBytes:
    """Mixed precision (bf16): bf16 params + bf16 grads + fp32 master + Adam m, v = 16 B/param;
    fp32: params + grads + Adam m, v = 16 B/param. Stage 3 shards everything over `world`;
    stages 1/2 keep full params (and grads for 1). ZeRO-3 also gathers about `gathered_layers`
    layers of full parameters at a time (prefetch)."""
    p_b, g_b = (2, 2) if bf16 else (4, 4)
    opt_b = 12 if bf16 else 8
    div = lambda x, shard: -(-x // world) if shard else x  # noqa: E731
    params = div(num_params, stage >= 3) * p_b
    grads = div(num_params, stage >= 2) * g_b
    optimizer = div(num_params, stage >= 1) * opt_b
    gathered = gathered_layers * layer_params * p_b if stage >= 3 and world > 1 else 0
    return StateBytes(params, grads, optimizer, gathered)


def ulysses_alltoall_bytes(tokens: int, width: int, sp: int, act_bytes: int = 2) -> int:
    """Bytes each rank sends per layer per forward pass: q, k, v in and the output back,
    4 * N * W * bytes / sp (of which (sp-1)/sp leave the rank). Backward sends as much again,
    and checkpoint recompute once more."""
    if sp <= 1:
        return 0
    return 4 * tokens * width * act_bytes // sp


# ---------------------------------------------------------------- peaks

def measure_peak_flops(device: str = "cpu", size: int = 1024, dtype=torch.float32, seconds: float = 0.3) -> float:
    """Achievable matmul FLOP/s on this device, measured (the MFU denominator on CPUs)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return 2 * size ** 3 * reps / (time.perf_counter() - start)


# Dense bf16 tensor-core peaks (FLOP/s) for MFU on known GPUs (datasheet, no sparsity).
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: str) -> tuple[float, str]:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, peak in GPU_PEAKS.items():
            if key in name:
                return peak, f"{name} datasheet bf16 dense"
        return measure_peak_flops(device, 8192, torch.bfloat16), f"{name} measured bf16 matmul"
    return measure_peak_flops(device), "CPU measured fp32 matmul"


