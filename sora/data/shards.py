"""Robust reading of WebDataset tar shards: members grouped by key, each group's KEY.json header,
and the media of raw shards (KEY.mp4|png|jpg). Latent shards (sora/data/latent_shards.py) are
read with the same grouping and header checks.

Shards come from strangers: nothing is ever unpickled, decoding is capped, and a bad sample or a
truncated/corrupt shard is skipped, counted and logged once per reason; it never stops training.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from sora.data.video_io import FrameTooLargeError, VideoDecodeError, decode_image, decode_video

log = logging.getLogger("sora.data")

PICKLE_EXTS = frozenset({"pyd", "pickle", "pkl", "pth", "pt"})
VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi")
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
MAX_MEMBER_BYTES = 512 * 1024 * 1024  # never read one member bigger than this into memory
DEFAULT_FPS = 8.0


class SkipStats:
    """Counts skipped samples/shards per reason; warns only the first time a reason occurs."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def skip(self, reason: str, key: str, detail: str = "") -> None:
        first = reason not in self.counts
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if first:
            log.warning("skipping %s: %s%s (further %r skips are only counted)",
                        key, reason, f" ({detail})" if detail else "", reason)

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)


@dataclass
class Group:
    """One sample's members, as read from a shard."""
    key: str
    members: dict[str, bytes] = field(default_factory=dict)  # extension -> payload
    exts: set[str] = field(default_factory=set)  # every extension seen, read or not
    too_large: str = ""  # name of an oversized member, left unread


def list_shards(data_dir: str | os.PathLike, split: str) -> list[str]:
    """Sorted paths of DATA_DIR/{split}-*.tar."""
    paths = sorted(glob.glob(os.path.join(os.fspath(data_dir), f"{glob.escape(split)}-*.tar")))
    if not paths:
        raise FileNotFoundError(f"no {split!r} shards ({split}-*.tar) in directory {os.fspath(data_dir)!r}")
    return paths


def _split_name(name: str) -> tuple[str, str] | None:
    """WebDataset convention: key = path up to the first dot of the basename; the rest is the extension."""
    dirname, base = os.path.split(name)
    if "." not in base or base.startswith("."):
        return None
    stem, ext = base.split(".", 1)
    return os.path.join(dirname, stem) if dirname else stem, ext.lower()


def _shard_error_reason(e: BaseException) -> str:
    msg = str(e).lower()
    truncated = isinstance(e, EOFError) or "unexpected end" in msg or "truncated" in msg
    return "truncated_shard" if truncated else "unreadable_shard"


def iter_groups(path: str, stats: SkipStats) -> Iterator[Group]:
    """Members of one shard grouped by key, in order. On a shard error the group being read is dropped."""
    try:
        f = open(path, "rb")
    except OSError as e:
        stats.skip("unreadable_shard", path, f"{type(e).__name__}: {e}")
        return
    with f:
        try:
            tf = tarfile.open(fileobj=f, mode="r|")  # stream mode: sequential, no member index
        except Exception as e:  # tarfile raises several types for garbage
            stats.skip(_shard_error_reason(e), path, f"{type(e).__name__}: {e}")
            return
        group: Group | None = None
        while True:
            try:
                member = tf.next()
            except Exception as e:
                stats.skip(_shard_error_reason(e), path, f"{type(e).__name__}: {e}")
                return
            if member is None:
                break
            tf.members = []  # stream mode still caches members; keep memory flat on long shards
            split = _split_name(member.name) if member.isfile() else None
            if split is None:
                continue
            key, ext = split
            if group is None or key != group.key:
                if group is not None:
                    yield group
                group = Group(key)
            group.exts.add(ext)
            if ext.rsplit(".", 1)[-1] in PICKLE_EXTS:
                continue  # never even read it
            if member.size > MAX_MEMBER_BYTES:
                group.too_large = member.name
                continue  # tarfile skips the unread data
            try:
                group.members[ext] = tf.extractfile(member).read()
            except Exception as e:
                stats.skip(_shard_error_reason(e), path, f"{type(e).__name__}: {e}")
                return
        # A tar cut at a member boundary ends "cleanly" in tarfile's eyes: demand the end-of-archive block.
        f.seek(tf.offset)
        block = f.read(tarfile.BLOCKSIZE)
        if len(block) < tarfile.BLOCKSIZE:
            stats.skip("truncated_shard", path, f"no end-of-archive marker at offset {tf.offset}")
            return
        if block.count(0) != tarfile.BLOCKSIZE:
            stats.skip("unreadable_shard", path, f"invalid tar header at offset {tf.offset}")
            return
        if group is not None:
            yield group


def _parse_json(group: Group, stats: SkipStats) -> tuple[str, float] | None:
    """(caption, fps) from KEY.json, or None after counting why not."""
    if "json" not in group.members:
        stats.skip("missing_json", group.key)
        return None
    try:
        meta = json.loads(group.members["json"].decode("utf-8"))
    except UnicodeDecodeError as e:
        stats.skip("non_utf8", group.key, f"KEY.json: {e}")
        return None
    except ValueError as e:
        stats.skip("bad_json", group.key, f"{type(e).__name__}: {e}")
        return None
    if not isinstance(meta, dict):
        stats.skip("bad_json", group.key, f"top level is {type(meta).__name__}, not an object")
        return None
    caption = meta.get("caption")
    if caption is None:
        stats.skip("missing_caption", group.key)
        return None
    if not isinstance(caption, str):
        stats.skip("bad_json", group.key, f"caption is {type(caption).__name__}, not a string")
        return None
    try:
        caption.encode("utf-8")            # JSON escapes can smuggle in lone surrogates ("\udcff")
    except UnicodeEncodeError as e:
        stats.skip("non_utf8", group.key, f"caption: {e}")
        return None
    if not caption.strip():
        stats.skip("empty_caption", group.key)
        return None
    fps = meta.get("fps", DEFAULT_FPS)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        stats.skip("bad_json", group.key, f"fps {fps!r} is not a positive number")
        return None
    return caption.strip(), float(fps)


def read_header(group: Group, stats: SkipStats) -> tuple[str, float] | None:
    """(caption, fps) of a shard group in either format, or None after counting why not: a group with a
    pickle member is refused whole (nothing of it is loaded), as is one with an oversized member."""
    pickled = sorted(e for e in group.exts if e.rsplit(".", 1)[-1] in PICKLE_EXTS)
    if pickled:
        stats.skip("pickle_payload", group.key, f"members {pickled} are never loaded")
        return None
    if group.too_large:
        stats.skip("member_too_large", group.key, f"{group.too_large} > {MAX_MEMBER_BYTES} bytes")
        return None
    return _parse_json(group, stats)


def decode_media(group: Group, stats: SkipStats, max_frames: int, max_pixels: int) -> np.ndarray | None:
    """uint8 [T, H, W, 3] (T <= max_frames) of a raw group's video or image, or None after counting why not."""
    video_ext = next((e for e in VIDEO_EXTS if e in group.members), None)
    image_ext = next((e for e in IMAGE_EXTS if e in group.members), None)
    if video_ext is None and image_ext is None:
        stats.skip("missing_media", group.key, f"members: {sorted(group.exts)}")
        return None
    try:
        if video_ext is not None:
            return decode_video(group.members[video_ext], max_frames=max_frames, max_pixels=max_pixels)
        return decode_image(group.members[image_ext], max_pixels=max_pixels)
    except FrameTooLargeError as e:
        stats.skip("frame_too_large", group.key, str(e))
    except VideoDecodeError as e:
        stats.skip("corrupt_video" if video_ext is not None else "corrupt_image", group.key, str(e))
    return None
