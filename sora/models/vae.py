"""Causal 3-D VAE: video [3, T, H, W] <-> latent [C, T', H', W'].

Causal in time: every temporal convolution pads only with past frames (the first frame is
replicated), so a latent frame never sees a later video frame. The first frame is encoded alone
and each later group of `ft` frames becomes one latent frame: T = 1 + ft*k -> T' = 1 + k.
Images are T = 1 and pass through the same network.

Both directions carry a parameter-free shortcut (the residual autoencoding idea of DC-AE): the
encoder adds the causally pooled RGB video to the first three latent channels and the decoder adds
the upsampled first three channels to its output, so the convolutions learn only the residual
detail. Colours and layout are right from the first step, which a small CPU budget needs.

Long and large videos (inference, preprocessing):
- **temporal chunking** (`chunk_frames`): the clip runs through the network a chunk of frames at a
  time; every causal convolution carries the input frames its next output still needs (its
  "cache") from one chunk to the next, so activations stay as large as one chunk whatever the
  clip's length, and the result equals the whole-clip pass (same arithmetic, other blocking).
  Chunk boundaries may fall anywhere, also inside a group of `ft` frames.
- **spatial tiling** (`tile`, `overlap`, in pixels): overlapping tiles are encoded (decoded) one by
  one and blended with linear ramps over the overlap; not exact (a tile does not see past its
  border), the error falls with the overlap.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sora.shapes import ShapeRules


class CausalConv3d(nn.Module):
    def __init__(self, cin, cout, kernel=3, stride_t=1, stride_s=1):
        super().__init__()
        self.kernel_t, self.stride_t = kernel, stride_t
        self.pad_t = kernel - 1
        self.pad_s = kernel // 2
        self.conv = nn.Conv3d(cin, cout, kernel, stride=(stride_t, stride_s, stride_s), padding=(0, self.pad_s, self.pad_s))
        self.streaming = False
        self.cache: torch.Tensor | None = None   # streaming: padded input frames not yet consumed

    def forward(self, x):                                      # x [B, C, T, H, W]
        if self.streaming:
            return self._stream(x)
        if self.pad_t:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.pad_t, -1, -1), x], dim=2)
        return self.conv(x)

    def _stream(self, x):
        if self.cache is None:                                 # first chunk: the causal padding
            if x.shape[2] == 0:
                return self._empty(x)
            self.cache = x[:, :, :1].expand(-1, -1, self.pad_t, -1, -1)
        x = torch.cat([self.cache, x], dim=2)                  # [B, C, cached + T, H, W]
        k, s = self.kernel_t, self.stride_t
        n = (x.shape[2] - k) // s + 1 if x.shape[2] >= k else 0
        self.cache = x[:, :, n * s:].clone()                   # a copy: must not keep the chunk alive
        return self.conv(x[:, :, :(n - 1) * s + k]) if n else self._empty(x)

    def _empty(self, x):
        b, _, _, h, w = x.shape
        p, k, s = self.pad_s, self.conv.kernel_size[1], self.conv.stride[1]
        return x.new_empty(b, self.conv.out_channels, 0, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, cin), cin)
        self.conv1 = CausalConv3d(cin, cout)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        # GroupNorm over (C, T, H, W) would mix future frames into the statistics; normalise per frame.
        h = self.conv1(F.silu(_frame_norm(self.norm1, x)))
        h = self.conv2(F.silu(_frame_norm(self.norm2, h)))
        return self.skip(x) + h


def _frame_norm(norm: nn.GroupNorm, x):
    b, c, t, h, w = x.shape
    y = norm(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, c, h, w).transpose(1, 2)


class Downsample(nn.Module):
    """Halve H and W; with `time`, also fold frames 1.. in pairs (frame 0 stays alone)."""

    def __init__(self, channels, time: bool):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, kernel=3, stride_t=2 if time else 1, stride_s=2)

    def forward(self, x):
        # With stride 2 and 2 frames of causal padding, output j sees frames 2j-2..2j: frame 0 alone first.
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W; with `time`, latent frame 0 -> 1 frame, each later one -> 2 frames."""

    def __init__(self, channels, time: bool):
        super().__init__()
        self.time = time
        self.conv = CausalConv3d(channels, channels * (2 if time else 1))
        self.streaming = False
        self.started = False       # streaming: latent frame 0 (which makes one frame only) is behind us

    def forward(self, x):
        b, c, t, h, w = x.shape
        x = F.interpolate(x, size=(t, h * 2, w * 2), mode="nearest") if t else x.new_empty(b, c, 0, 2 * h, 2 * w)
        y = self.conv(x)
        if not self.time:
            return y
        t = y.shape[2]
        y = y.view(b, 2, c, t, h * 2, w * 2)
        first = not (self.streaming and self.started)
        if self.streaming and t:
            self.started = True
        rest = y[:, :, :, int(first):].permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * (t - int(first)), h * 2, w * 2)
        return torch.cat([y[:, 0, :, :1], rest], dim=2) if first and t else rest


@contextlib.contextmanager
def streaming(module: nn.Module):
    """Within the block, `module` runs chunk after chunk of one clip, carrying causal caches."""
    parts = [m for m in module.modules() if isinstance(m, (CausalConv3d, Upsample))]
    for m in parts:
        m.streaming, m.cache, m.started = True, None, False
    try:
        yield
    finally:
        for m in parts:
            m.streaming, m.cache, m.started = False, None, False


def _levels(factor: int) -> int:
    return int(math.log2(factor))


def _run(layers, x):
    """Apply layers in order; a chunk that yields no frame yet (too short for a stride) stops early."""
    for layer in layers:
        if x.shape[2] == 0:
            return None
        x = layer(x)
    return x if x.shape[2] else None


class Encoder(nn.Module):
    def __init__(self, ch, zc, ft, fh):
        super().__init__()
        n_s, n_t = _levels(fh), _levels(ft)
        widths = [ch * min(2 ** i, 4) for i in range(n_s + 1)]
        self.conv_in = CausalConv3d(3, widths[0])
        layers = []
        for i in range(n_s):
            layers += [ResBlock(widths[i], widths[i + 1]), Downsample(widths[i + 1], time=i >= n_s - n_t)]
        layers += [ResBlock(widths[-1], widths[-1])]
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(min(8, widths[-1]), widths[-1])
        self.conv_out = CausalConv3d(widths[-1], 2 * zc)

    def forward(self, x):
        """x [B, 3, T, H, W] -> [B, 2C, T', H', W'] (None: a streamed chunk with no output frame yet)."""
        h = _run([self.conv_in, *self.body], x)
        return None if h is None else self.conv_out(F.silu(_frame_norm(self.norm_out, h)))


class Decoder(nn.Module):
    def __init__(self, ch, zc, ft, fh):
        super().__init__()
        n_s, n_t = _levels(fh), _levels(ft)
        widths = [ch * min(2 ** i, 4) for i in range(n_s + 1)][::-1]
        self.conv_in = CausalConv3d(zc, widths[0])
        layers = [ResBlock(widths[0], widths[0])]
        for i in range(n_s):
            layers += [Upsample(widths[i], time=i < n_t), ResBlock(widths[i], widths[i + 1])]
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(min(8, widths[-1]), widths[-1])
        self.conv_out = CausalConv3d(widths[-1], 3)

    def forward(self, z):
        h = _run([self.conv_in, *self.body], z)
        return None if h is None else self.conv_out(F.silu(_frame_norm(self.norm_out, h)))


def pool_video(x, ft: int, fh: int):
    """[B, C, T, H, W] -> [B, C, T', H/fh, W/fh]: frame 0 alone, then the mean of each group of ft."""
    x = F.avg_pool3d(x, (1, fh, fh))
    first, rest = x[:, :, :1], x[:, :, 1:]
    if rest.shape[2]:
        b, c, t, h, w = rest.shape
        rest = rest.view(b, c, t // ft, ft, h, w).mean(3)
    return torch.cat([first, rest], dim=2)


def unpool_video(z, ft: int, fh: int):
    """Inverse layout of pool_video: [B, C, T', H', W'] -> [B, C, 1 + ft(T'-1), H'fh, W'fh] (repeats)."""
    z = z.repeat_interleave(fh, 3).repeat_interleave(fh, 4)
    return torch.cat([z[:, :, :1], z[:, :, 1:].repeat_interleave(ft, 2)], dim=2)


def _stream(net: nn.Module, x: torch.Tensor, chunk: int, out_frames: int) -> torch.Tensor:
    """net over x [B, C, T, H, W] in chunks of `chunk` frames, carried caches; outputs written in place."""
    out, pos = None, 0
    with streaming(net):
        for i in range(0, x.shape[2], chunk):
            y = net(x[:, :, i:i + chunk])
            if y is None:
                continue
            if out is None:
                out = y.new_empty(*y.shape[:2], out_frames, *y.shape[3:])
            out[:, :, pos:pos + y.shape[2]] = y
            pos += y.shape[2]
    if pos != out_frames:
        raise RuntimeError(f"streamed {pos} frames, expected {out_frames}")
    return out


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile] if starts[-1] != size - tile else starts


def _ramp(n: int, ramp: int, lo: bool, hi: bool, like: torch.Tensor) -> torch.Tensor:
    """Blend weights [n] of one tile side: linear ramps of `ramp` samples where a neighbour overlaps."""
    w = torch.ones(n, dtype=like.dtype, device=like.device)
    if ramp > 0:
        r = (torch.arange(n, dtype=like.dtype, device=like.device) + 0.5) / ramp
        if lo:
            w = torch.minimum(w, r)
        if hi:
            w = torch.minimum(w, r.flip(0))
    return w


def tiled(fn, x: torch.Tensor, tile: int, overlap: int, num: int, den: int) -> torch.Tensor:
    """fn over overlapping spatial tiles of x [B, C, T, H, W], blended. fn maps a tile of h x w to
    h*num/den x w*num/den; `tile`, `overlap` are in x's pixels and multiples of `den`."""
    H, W = x.shape[-2:]
    if H <= tile and W <= tile:
        return fn(x)
    stride = tile - overlap
    out = weight = None
    hs, ws = _tile_starts(H, tile, stride), _tile_starts(W, tile, stride)
    for i in hs:
        for j in ws:
            y = fn(x[..., i:i + tile, j:j + tile])
            th, tw = y.shape[-2:]
            if out is None:
                out = y.new_zeros(*y.shape[:3], H * num // den, W * num // den)
                weight = y.new_zeros(H * num // den, W * num // den)
            ramp = overlap * num // den
            wgt = _ramp(th, ramp, i > 0, i != hs[-1], y)[:, None] * _ramp(tw, ramp, j > 0, j != ws[-1], y)[None]
            oi, oj = i * num // den, j * num // den
            out[..., oi:oi + th, oj:oj + tw] += y * wgt
            weight[oi:oi + th, oj:oj + tw] += wgt
    return out / weight


class CausalVAE(nn.Module):
    def __init__(self, channels=32, latent_channels=4, ft=2, fh=4):
        super().__init__()
        if ft > fh:
            raise ValueError(f"vae.ft={ft} larger than vae.fh={fh} is not supported (time folds at spatial levels)")
        self.ft, self.fh, self.latent_channels = ft, fh, latent_channels
        self.encoder = Encoder(channels, latent_channels, ft, fh)
        self.decoder = Decoder(channels, latent_channels, ft, fh)
        # Per-channel latent statistics, measured after stage 1: the DiT sees (z - mean) / std.
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))

    @property
    def rules(self) -> ShapeRules:
        """Which videos this VAE takes (sora/shapes.py)."""
        return ShapeRules(self.ft, self.fh)

    def check_video(self, x):
        problem = self.rules.problem(*x.shape[-3:])
        if problem:
            raise ValueError(f"video of {'x'.join(map(str, x.shape[-3:]))} frames x height x width: {problem}")

    def _check_tiling(self, tile, overlap, unit, what):
        if tile and (tile % unit or overlap % unit or not 0 <= overlap < tile):
            raise ValueError(f"{what} tile {tile} / overlap {overlap} must be multiples of {unit} with 0 <= overlap < tile")

    def encode_dist(self, x, chunk_frames: int = 0, tile: int = 0, overlap: int = 0):
        """x [B, 3, T, H, W] in [-1, 1] -> (mean, logvar) [B, C, T', H', W'].

        chunk_frames > 0: stream the clip through the encoder that many frames at a time (flat memory,
        same result); tile > 0: encode overlapping tile x tile pixel tiles (overlap pixels) and blend."""
        self.check_video(x)
        self._check_tiling(tile, overlap, self.fh, "encode")
        t_lat = self.rules.latent_frames(x.shape[2])

        def enc(xt):
            if chunk_frames and xt.shape[2] > chunk_frames:
                return _stream(self.encoder, xt, chunk_frames, t_lat)
            return self.encoder(xt)

        h = tiled(enc, x, tile, overlap, 1, self.fh) if tile else enc(x)
        mean, logvar = h.chunk(2, dim=1)
        k = min(3, self.latent_channels)
        mean = torch.cat([mean[:, :k] + pool_video(x[:, :k], self.ft, self.fh), mean[:, k:]], dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x, sample: bool = False, chunk_frames: int = 0, tile: int = 0, overlap: int = 0):
        """Scaled latent (what the DiT sees)."""
        mean, logvar = self.encode_dist(x, chunk_frames, tile, overlap)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        return (z - self.latent_mean.view(-1, 1, 1, 1)) / self.latent_std.view(-1, 1, 1, 1)

    def decode(self, z, chunk_frames: int = 0, tile: int = 0, overlap: int = 0):
        """Scaled latent [B, C, T', H', W'] -> video [B, 3, T, H, W]; chunk_frames/tile/overlap in
        latent frames / latent pixels."""
        z = z * self.latent_std.view(-1, 1, 1, 1) + self.latent_mean.view(-1, 1, 1, 1)
        return self.decode_unscaled(z, chunk_frames, tile, overlap)

    def decode_unscaled(self, z, chunk_frames: int = 0, tile: int = 0, overlap: int = 0):
        self._check_tiling(tile, overlap, 1, "decode")
        frames = self.rules.video_frames(z.shape[2])

        def dec(zt):
            if chunk_frames and zt.shape[2] > chunk_frames:
                return _stream(self.decoder, zt, chunk_frames, frames)
            return self.decoder(zt)

        out = tiled(dec, z, tile, overlap, self.fh, 1) if tile else dec(z)
        k = min(3, self.latent_channels)
        return torch.cat([out[:, :k] + unpool_video(z[:, :k], self.ft, self.fh), out[:, k:]], dim=1)

    def forward(self, x, sample: bool = True):
        """Training pass: x [B, 3, T, H, W] -> (reconstruction, mean, logvar)."""
        mean, logvar = self.encode_dist(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        return self.decode_unscaled(z), mean, logvar

    def latent_shape(self, frames, height, width):
        return (self.latent_channels, *self.rules.latent_size(frames, height, width))
