"""Per-sample preparation, token-budget packing and the rank split (shape rules: tests/test_shapes.py)."""
import numpy as np
import pytest
import torch

from sora.data.packing import PackItem, pack, take_first_fit_decreasing
from sora.data.pipeline import to_model_video
from sora.ops.packing_index import check_packing, token_positions


def test_to_model_video_range_and_shape():
    frames = np.random.default_rng(0).integers(0, 256, (9, 50, 70, 3), dtype=np.uint8)
    v = to_model_video(frames, (9, 48, 64))
    assert v.shape == (3, 9, 48, 64) and v.min() >= -1 and v.max() <= 1
    small = to_model_video(frames, (5, 24, 32))   # downscaled with aspect kept
    assert small.shape == (3, 5, 24, 32)


def items_of(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [PackItem(torch.randn(4, t, h, w, generator=g), (t, h, w), f"c{i}", f"k{i}") for i, (t, h, w) in enumerate(sizes)]


def test_pack_fields_and_positions():
    items = items_of([(1, 3, 5), (5, 4, 4), (1, 1, 1)])
    b = pack(items, budget=200)
    assert b.cu_seqlens.tolist() == [0, 15, 95, 96] and b.max_seqlen == 80 and b.num_tokens == 96
    assert b.grid.tolist() == [[1, 3, 5], [5, 4, 4], [1, 1, 1]] and b.efficiency == 96 / 200
    check_packing(b.cu_seqlens, b.grid, b.num_tokens)
    pos = token_positions(b.cu_seqlens, b.grid)
    assert pos[15].tolist() == [0, 0, 0] and pos[94].tolist() == [4, 3, 3] and pos[95].tolist() == [0, 0, 0]
    assert b.values_per_token == 4
    torch.testing.assert_close(b.latents[15 * 4:95 * 4], items[1].latent.reshape(-1))
    with pytest.raises(ValueError):
        pack([])


def test_first_fit_decreasing_fills_budget_and_loses_nothing():
    rng = np.random.default_rng(0)
    sizes = [(int(rng.choice([1, 3, 5, 9])), int(rng.integers(2, 8)), int(rng.integers(2, 8))) for _ in range(400)]
    assert max(t * h * w for t, h, w in sizes) <= 512
    buffer, seen, packs = [], 0, []
    stream = iter(items_of(sizes))
    while True:
        for it in stream:
            buffer.append(it)
            if len(buffer) >= 32:
                break
        if not buffer:
            break
        picked = take_first_fit_decreasing(buffer, 512)
        assert picked, "nothing fits although every sample is within the budget"
        assert sum(p.num_tokens for p in picked) <= 512
        seen += len(picked)
        packs.append(sum(p.num_tokens for p in picked))
    assert seen == len(sizes)                       # every sample packed exactly once
    full = packs[: len(packs) - 3]                  # the tail drains a nearly empty buffer
    assert np.mean(full) / 512 > 0.95


def test_ranks_split_data_without_overlap_or_loss(tmp_path):
    """Data is split by data-parallel rank: with more or fewer shards than ranks, every sample of an
    epoch goes to exactly one rank."""
    from sora.config import load_config
    from sora.data.pipeline import VideoStream
    from sora.data.shards import list_shards
    from sora.data.synth import synthesize
    from sora.shapes import ShapeRules

    synthesize(tmp_path, clips=12, seed=1, shard_size=4, heldout_clips=2)       # 3 train shards
    cfg = load_config("configs/demo.yaml", ["data.shuffle_buffer=3"]).data
    paths = list_shards(tmp_path, "train")
    for dp in (2, 5):                                       # fewer ranks than shards, and more
        keys = [[s.key for s in VideoStream(paths, cfg, ShapeRules(2, 4, (1, 2, 2)), r, dp, seed=0, epochs=1)] for r in range(dp)]
        flat = [k for ks in keys for k in ks]
        assert sorted(flat) == sorted(set(flat)) and len(flat) == 12, (dp, keys)


def test_latent_cache_is_bounded_and_eviction_changes_nothing():
    """PackedLoader keeps at most cache_items latents; re-encoding an evicted clip gives the same packs."""
    from sora.data.loader import PackedLoader
    from sora.data.stream import Decoded

    class Clips:
        dp_rank = 0

        def __iter__(self):                                      # 10 clips, seen 4 times each
            for i in range(40):
                k = i % 10
                g = torch.Generator().manual_seed(k)
                yield Decoded(f"k{k}", torch.randn(3, 1, 8, 8 + 4 * (k % 3), generator=g), f"c{k}", 8.0)

    encoded = []

    def encode(video):
        encoded.append(1)
        return video[:, :, ::2, ::2].clone()                     # deterministic stand-in: [3, 1, 4, W/2]

    packs, calls = {}, {}
    for size in (1024, 3):
        encoded.clear()
        loader = PackedLoader(Clips(), encode, (1, 2, 2), 20, lookahead=4, cache_items=size)
        packs[size] = [next(loader) for _ in range(12)]
        assert len(loader.cache) <= size
        calls[size] = len(encoded)
    assert calls[1024] == 10 < calls[3]                           # all cached vs evicted and re-encoded
    for a, b in zip(packs[1024], packs[3]):
        assert a.keys == b.keys and torch.equal(a.latents, b.latents) and torch.equal(a.cu_seqlens, b.cu_seqlens)
