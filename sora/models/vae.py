"""Causal 3-D VAE: video [3, T, H, W] <-> latent [C, T', H', W'].

Causal in time: every temporal convolution pads only with past frames (the first frame is
replicated), so a latent frame never sees a later video frame. The first frame is encoded alone
and each later group of `ft` frames becomes one latent frame: T = 1 + ft*k -> T' = 1 + k.
Images are T = 1 and pass through the same network.

Both directions carry a parameter-free shortcut (the residual autoencoding idea of DC-AE): the
encoder adds the causally pooled RGB video to the first three latent channels and the decoder adds
the upsampled first three channels to its output, so the convolutions learn only the residual
detail. Colours and layout are right from the first step, which a small CPU budget needs.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalConv3d(nn.Module):
    def __init__(self, cin, cout, kernel=3, stride_t=1, stride_s=1):
        super().__init__()
        self.pad_t = kernel - 1
        self.pad_s = kernel // 2
        self.conv = nn.Conv3d(cin, cout, kernel, stride=(stride_t, stride_s, stride_s), padding=(0, self.pad_s, self.pad_s))

    def forward(self, x):                                      # x [B, C, T, H, W]
        if self.pad_t:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.pad_t, -1, -1), x], dim=2)
        return self.conv(x)


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

    def forward(self, x):
        b, c, t, h, w = x.shape
        x = F.interpolate(x, size=(t, h * 2, w * 2), mode="nearest")
        y = self.conv(x)
        if not self.time:
            return y
        y = y.view(b, 2, c, t, h * 2, w * 2)
        first = y[:, 0, :, :1]                                    # [B, C, 1, H, W]
        rest = y[:, :, :, 1:].permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * (t - 1), h * 2, w * 2)
        return torch.cat([first, rest], dim=2)


def _levels(factor: int) -> int:
    return int(math.log2(factor))


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
        h = self.body(self.conv_in(x))
        return self.conv_out(F.silu(_frame_norm(self.norm_out, h)))


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
        h = self.body(self.conv_in(z))
        return self.conv_out(F.silu(_frame_norm(self.norm_out, h)))


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

    def check_video(self, x):
        t, h, w = x.shape[-3:]
        if (t - 1) % self.ft or h % self.fh or w % self.fh:
            raise ValueError(f"video of {t}x{h}x{w} needs frames = 1 + {self.ft}k and sides divisible by {self.fh}")

    def encode_dist(self, x):
        """x [B, 3, T, H, W] in [-1, 1] -> (mean, logvar) [B, C, T', H', W']."""
        self.check_video(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        k = min(3, self.latent_channels)
        mean = torch.cat([mean[:, :k] + pool_video(x[:, :k], self.ft, self.fh), mean[:, k:]], dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x, sample: bool = False):
        """Scaled latent (what the DiT sees)."""
        mean, logvar = self.encode_dist(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        return (z - self.latent_mean.view(-1, 1, 1, 1)) / self.latent_std.view(-1, 1, 1, 1)

    def decode(self, z):
        """Scaled latent [B, C, T', H', W'] -> video [B, 3, T, H, W]."""
        return self.decode_unscaled(z * self.latent_std.view(-1, 1, 1, 1) + self.latent_mean.view(-1, 1, 1, 1))

    def decode_unscaled(self, z):
        out = self.decoder(z)
        k = min(3, self.latent_channels)
        return torch.cat([out[:, :k] + unpool_video(z[:, :k], self.ft, self.fh), out[:, k:]], dim=1)

    def latent_shape(self, frames, height, width):
        return (self.latent_channels, (frames - 1) // self.ft + 1, height // self.fh, width // self.fh)
