"""The VAE at scale: temporal chunking with carried causal caches equals the whole-clip pass (chunk
boundaries anywhere, also mid-group; images), activation size does not grow with clip length,
spatial tiling stays within a stated error of the untiled pass; stage-1 losses and metrics."""
import math

import pytest
import torch
import torch.nn.functional as F

from sora.models.vae import CausalConv3d, CausalVAE
from sora.train.vae_losses import PatchDiscriminator, PerceptualNet, adv_ramp, hinge_d_loss, kl_loss, psnr, ssim


def _vae(ft, fh, zc=5, seed=0):
    torch.manual_seed(seed)
    vae = CausalVAE(channels=8, latent_channels=zc, ft=ft, fh=fh).eval()
    with torch.no_grad():                     # non-trivial latent statistics
        vae.latent_mean.uniform_(-1, 1)
        vae.latent_std.uniform_(0.5, 2)
    return vae


# chunk sizes: 1 frame, mid-group (3 with ft=2; 5 and 6 with ft=4), group-aligned, longer than a group
@pytest.mark.parametrize("ft,fh,chunks", [(2, 4, (1, 3, 4)), (4, 8, (5, 6, 8)), (1, 2, (1, 2))])
def test_chunked_encode_decode_equal_whole_clip(ft, fh, chunks):
    vae = _vae(ft, fh)
    for frames in (1, 1 + ft, 1 + 8 * ft + 2 * ft):      # an image, one group, a clip > 8x the chunk
        x = torch.randn(1, 3, frames, 3 * fh, 5 * fh)    # odd latent sides 3 x 5
        with torch.no_grad():
            z = vae.encode(x)
            y = vae.decode(z)
            for c in chunks:
                zc = vae.encode(x, chunk_frames=c)
                assert zc.shape == z.shape
                torch.testing.assert_close(zc, z, rtol=1e-5, atol=1e-5)   # float32 blocking differences only
                yc = vae.decode(z, chunk_frames=max(1, c // ft))
                assert yc.shape == y.shape
                torch.testing.assert_close(yc, y, rtol=1e-5, atol=1e-5)
    # the module is left as it was: no streaming state survives a chunked call
    assert all(not m.streaming and m.cache is None for m in vae.modules() if isinstance(m, CausalConv3d))


def _max_conv_frames(vae, fn):
    """Largest number of frames any causal conv of the VAE processes in one call during fn()."""
    seen = [0]
    hooks = [m.conv.register_forward_pre_hook(lambda mod, args: seen.__setitem__(0, max(seen[0], args[0].shape[2])))
             for m in vae.modules() if isinstance(m, CausalConv3d)]
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in hooks:
            h.remove()
    return seen[0]


def test_chunked_activation_size_does_not_grow_with_length():
    vae = _vae(4, 8)
    sizes = {}
    for frames in (1 + 4 * 4, 1 + 4 * 32):             # 17 and 129 frames, chunks of 8
        x = torch.randn(1, 3, frames, 16, 16)
        z = vae.encode(x)
        sizes[frames] = (_max_conv_frames(vae, lambda: vae.encode(x, chunk_frames=8)),
                         _max_conv_frames(vae, lambda: vae.decode(z, chunk_frames=2)),
                         _max_conv_frames(vae, lambda: vae.encode(x)))
    (enc17, dec17, whole17), (enc129, dec129, whole129) = sizes[17], sizes[129]
    assert enc129 == enc17 <= 8 + 2 and dec129 == dec17 <= 2 * 4 + 2   # a chunk plus the carried cache
    assert whole129 > 7 * whole17 / 2                                   # without chunking: grows with T


def _smooth(x, k=5):
    return F.avg_pool3d(x, (1, k, k), 1, (0, k // 2, k // 2), count_include_pad=False)


def test_tiled_encode_decode_error_bound():
    """Tiling is not exact: a tile sees no context past its border and the per-frame GroupNorm
    statistics are the tile's. Here, random weights (worse than trained ones, whose features are
    more local) on a 64x96 frame; the error falls as the overlap grows."""
    vae = _vae(2, 4, zc=4)
    x = _smooth(torch.randn(1, 3, 5, 64, 96))          # natural-ish (spatially correlated) input
    with torch.no_grad():
        mean, _ = vae.encode_dist(x)
        dec = vae.decode_unscaled(mean)
        # a tile covering the frame is the untiled pass exactly
        torch.testing.assert_close(vae.encode_dist(x, tile=96, overlap=8)[0], mean)
        errs = {}
        for tile, overlap in ((48, 0), (48, 16), (48, 24), (64, 32)):
            m = vae.encode_dist(x, chunk_frames=2, tile=tile, overlap=overlap)[0]
            d = vae.decode_unscaled(mean, tile=tile // 4, overlap=overlap // 4)
            assert m.shape == mean.shape and d.shape == dec.shape
            errs[(tile, overlap)] = [((m - mean).pow(2).mean().sqrt() / mean.std()).item(),
                                     ((d - dec).pow(2).mean().sqrt() / dec.std()).item()]
    for i in (0, 1):   # blending beats butting tiles together; more overlap, less error
        assert errs[(48, 0)][i] > max(errs[(48, 16)][i], errs[(48, 24)][i]) > errs[(64, 32)][i], errs
    # the bound we state: relative RMS error (RMS of the difference / std of the untiled output)
    assert max(errs[(48, 24)]) <= 0.25 and max(errs[(64, 32)]) <= 0.12, errs


def test_tiling_rejects_misaligned_tiles():
    vae = _vae(2, 4)
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.encode(torch.randn(1, 3, 1, 16, 16), tile=10, overlap=2)


# ---------------------------------------------------------------- metrics and losses

def _ssim_reference(a, b):
    """SSIM straight from its definition: every 11x11 window, Gaussian weights, float64, loops."""
    a, b = (a.double() + 1) / 2, (b.double() + 1) / 2
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    w = g[:, None] * g[None]
    w = w / w.sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for c in range(a.shape[0]):
        for t in range(a.shape[1]):
            for i in range(a.shape[2] - 10):
                for j in range(a.shape[3] - 10):
                    p, q = a[c, t, i:i + 11, j:j + 11], b[c, t, i:i + 11, j:j + 11]
                    mp, mq = (w * p).sum(), (w * q).sum()
                    vp, vq = (w * (p - mp) ** 2).sum(), (w * (q - mq) ** 2).sum()
                    cov = (w * (p - mp) * (q - mq)).sum()
                    vals.append(((2 * mp * mq + c1) * (2 * cov + c2)) / ((mp ** 2 + mq ** 2 + c1) * (vp + vq + c2)))
    return torch.stack(vals).mean().item()


def test_ssim_and_psnr_against_definitions():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 2, 13, 17, generator=g) * 2 - 1       # odd sides
    b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    assert ssim(a, b) == pytest.approx(_ssim_reference(a, b), rel=1e-9, abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, a + 0.1) == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-4)


def test_perceptual_discriminator_and_warmup():
    torch.manual_seed(0)
    net = PerceptualNet()
    assert not any(p.requires_grad for p in net.parameters())
    again = PerceptualNet()                                  # fixed weights without any download
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), again.parameters()))
    x = torch.rand(1, 3, 3, 20, 12) * 2 - 1
    rec = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    assert net(x, x).item() == pytest.approx(0.0, abs=1e-6)
    loss = net(rec, x)
    loss.backward()
    assert loss.item() > 0 and rec.grad.abs().sum() > 0
    disc = PatchDiscriminator(channels=8)
    logits = disc(x)
    assert logits.shape[:3] == (1, 1, 3) and torch.isfinite(logits).all()
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert [adv_ramp(s, 10, 4) for s in (0, 9, 10, 11, 13, 50)] == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    m, lv = torch.zeros(3), torch.zeros(3)
    assert kl_loss(m, lv).item() == 0.0
