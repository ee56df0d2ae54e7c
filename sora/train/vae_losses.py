"""Stage-1 losses and reconstruction metrics: KL, a perceptual feature loss from a frozen conv net,
a 3-D patch discriminator with hinge losses, PSNR and SSIM.

No weights are ever downloaded. The perceptual net is small and fixed: its weights come from a
local safetensors file when one is given (`vae.perceptual_path`), else from a fixed seed; random
conv features are a weaker but real texture/edge statistic, and the loss shape is LPIPS's
(channel-normalised features, squared difference, mean per layer).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), mean over elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()


class PerceptualNet(nn.Module):
    """Frame-wise conv features at three scales; frozen."""

    WIDTHS = (32, 64, 128)

    def __init__(self, path: str = "", seed: int = 1234):
        super().__init__()
        layers, cin = [], 3
        for w in self.WIDTHS:
            layers.append(nn.Sequential(nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1),
                                        nn.ReLU()))
            cin = w
        self.stages = nn.ModuleList(layers)
        if path:
            from safetensors.torch import load_file

            self.load_state_dict(load_file(path))
        else:
            gen = torch.Generator().manual_seed(seed)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.data = torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in)
                    m.bias.data.zero_()
        self.requires_grad_(False).eval()

    def features(self, x):                                    # x [N, 3, H, W]
        out = []
        for i, stage in enumerate(self.stages):
            if i:
                x = F.avg_pool2d(x, 2) if min(x.shape[-2:]) >= 2 else x
            x = stage(x)
            out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-8))   # unit norm over channels
        return out

    def forward(self, rec, target):
        """rec, target [B, 3, T, H, W] -> scalar distance."""
        def frames(v):
            return v.transpose(1, 2).flatten(0, 1)
        fr, ft = self.features(frames(rec)), self.features(frames(target))
        return sum((a - b).pow(2).sum(1).mean() for a, b in zip(fr, ft)) / len(fr)

    def train(self, mode: bool = True):                       # always frozen
        return super().train(False)


class PatchDiscriminator(nn.Module):
    """3-D PatchGAN: a logit per spacetime patch. Causal padding is irrelevant here (it never feeds the VAE)."""

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        mods, cin = [nn.Conv3d(3, channels, 3, stride=(1, 2, 2), padding=1), nn.LeakyReLU(0.2)], channels
        for i in range(1, layers):
            cout = channels * min(2 ** i, 8)
            mods += [nn.Conv3d(cin, cout, 3, stride=(1, 2, 2), padding=1), nn.GroupNorm(min(8, cout), cout),
                     nn.LeakyReLU(0.2)]
            cin = cout
        mods.append(nn.Conv3d(cin, 1, 3, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, x):                                     # [B, 3, T, H, W] -> [B, 1, T, h, w]
        return self.net(x)


def hinge_d_loss(real_logits, fake_logits):
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def adv_ramp(step: int, start: int, warmup: int) -> float:
    """Generator's adversarial weight factor: 0 before `start`, then linear to 1 over `warmup` steps."""
    if step < start:
        return 0.0
    return min(1.0, (step - start + 1) / max(1, warmup))


def psnr(rec: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of videos in [-1, 1] (peak-to-peak 2), reconstruction clamped to the range."""
    mse = (rec.clamp(-1, 1) - target).double().pow(2).mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-10))


def _gauss(size: int = 11, sigma: float = 1.5, dtype=torch.float64):
    g = torch.exp(-((torch.arange(size, dtype=dtype) - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(rec: torch.Tensor, target: torch.Tensor, window: int = 11) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, 'valid' windows)
    over frames and channels of videos [3, T, H, W] in [-1, 1]; windows shrink to fit small frames."""
    x = ((rec.clamp(-1, 1) + 1) / 2).double().transpose(0, 1)       # [T, 3, H, W] in [0, 1]
    y = ((target + 1) / 2).double().transpose(0, 1)
    win = min(window, x.shape[-2], x.shape[-1])
    g = _gauss(win, 1.5 * win / window)
    k = (g[:, None] * g[None]).expand(3, 1, win, win)
    def blur(v):
        return F.conv2d(v, k, groups=3)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean().item()
