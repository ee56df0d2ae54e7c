"""One source -> its samples: checks, optional shot detection, clip windows, encoding, filters.

Every way a source or a clip can fail ends here as a counted skip; a clip is written only whole
(frames decoded cleanly, at least the clip minimum long, moving enough), never a part of one.
"""
from __future__ import annotations

import logging
import math
from fractions import Fraction
from itertools import count

import av

from sora.data.ingest.clips import detect_shots, plan_windows
from sora.data.ingest.decode import CfrReader, Skip, decode_still, output_rate, probe, rgb_converter, small_bgr
from sora.data.ingest.options import IngestOptions
from sora.data.ingest.report import Tally
from sora.data.ingest.sources import Item, sidecar_caption
from sora.data.ingest.writer import ChunkShards, ClipEncoder, image_sample, sample
from sora.data.shards import DEFAULT_FPS

log = logging.getLogger("sora.ingest")

TRUNCATED_FRACTION = 0.9    # a video that decodes to less than this share of its header's length


def check_size(width: int, height: int, opts: IngestOptions) -> None:
    short, long = min(width, height), max(width, height)
    if short < opts.min_side:
        raise Skip("too_small", f"{width}x{height}: short side under --min-side {opts.min_side}")
    if long / short > opts.max_aspect:
        raise Skip("too_wide", f"{width}x{height}: aspect {long / short:.2f} over --max-aspect {opts.max_aspect}")


def ingest_item(item: Item, opts: IngestOptions, shards: ChunkShards, tally: Tally) -> None:
    """Write the samples of one item into `shards`, counting everything in `tally`."""
    tally.files += 1
    try:
        if item.skip is not None:
            raise Skip(*item.skip)
        if item.size == 0:
            raise Skip("empty_file", "0 bytes")
        caption = item.caption
        if caption is None:
            caption, why = sidecar_caption(item.path)
            if caption is None:
                raise Skip(*why)
        if item.is_image:
            _image(item, caption, opts, shards, tally)
        else:
            _video(item, caption, opts, shards, tally)
    except Skip as s:
        tally.skip(item.path, s.reason, s.detail)
    except (av.FFmpegError, OSError) as e:               # FFmpeg / the file system failing on this one file
        tally.skip(item.path, "decode_error", f"{type(e).__name__}: {e}")
    except Exception as e:   # a bug met by one odd file: counted (and logged) so a long run still ends
        log.exception("ingest failed on %s", item.path)
        tally.skip(item.path, "internal_error", f"{type(e).__name__}: {e}")


def _image(item: Item, caption: str, opts: IngestOptions, shards: ChunkShards, tally: Tally) -> None:
    frame = decode_still(item.path, opts.max_pixels, opts.max_side)       # [H, W, 3]
    check_size(frame.shape[1], frame.shape[0], opts)
    meta = {"caption": caption, "fps": DEFAULT_FPS, "frames": 1, "height": frame.shape[0], "width": frame.shape[1],
            "source": item.path, "start": 0.0, "end": 0.0, "shot": 0, "motion": 0.0}
    shards.write(image_sample(shards.next_key(), frame, meta))
    tally.clips += 1
    tally.frames += 1


def _segment(item: Item, duration: float | None, opts: IngestOptions) -> tuple[float, float | None, float | None]:
    """(start, end or None, length or None) of the part of the video to ingest, in seconds. A length the
    header does not give is not filtered by --min-seconds / --max-seconds."""
    start = item.start or 0.0
    end = item.end
    if duration is not None:
        if start >= duration:
            raise Skip("bad_range", f"start {start} s is past the video's end ({duration:.3f} s)")
        end = duration if end is None else min(end, duration)
    length = None if end is None else end - start
    if length is not None and length < opts.min_seconds:
        raise Skip("too_short", f"{length:.3f} s under --min-seconds {opts.min_seconds}")
    if length is not None and length > opts.max_seconds:
        raise Skip("too_long", f"{length:.3f} s over --max-seconds {opts.max_seconds}")
    return start, end, length


def _video(item: Item, caption: str, opts: IngestOptions, shards: ChunkShards, tally: Tally) -> None:
    info = probe(item.path, opts.max_pixels)
    if info.width and info.height:           # the header's size (rotation changes neither side's length)
        check_size(info.width, info.height, opts)
    rate = output_rate(info.rate, opts.fps_max)
    start, end, length = _segment(item, info.duration, opts)
    min_frames = max(1, math.ceil(opts.clip_min * rate - 1e-9))
    max_frames = max(1, math.floor(opts.clip_max * rate + 1e-9))
    if opts.scenes:
        shots = CfrReader(item.path, rate, opts.max_pixels, small_bgr, start, end)
        cuts, total = detect_shots(shots, rate)
        if total == 0:
            raise Skip("decode_error" if shots.stopped or shots.errors else "no_frames", shots.last_error)
        windows, dropped = plan_windows(cuts, total, min_frames, max_frames)
        open_end = False
    else:    # one shot; its length is the header's estimate, and frames past it keep coming in windows
        total = round(length * rate) if length is not None else max_frames
        windows, dropped = plan_windows([], max(total, min_frames), min_frames, max_frames)
        open_end = True
    for shot, lost in dropped:
        tally.skip(item.path, "too_short", f"shot {shot}: {lost} frames under the --clip-seconds minimum")
    reader = CfrReader(item.path, rate, opts.max_pixels, rgb_converter(opts.max_side, info.sar), start, end)
    clips_before = tally.clips
    writer = _ClipWriter(item, caption, rate, start, min_frames, opts, shards, tally)
    seen = writer.run(reader, _windows(windows, open_end, max_frames), check_first=not (info.width and info.height))
    if seen == 0:
        raise Skip("decode_error" if reader.stopped or reader.errors else "no_frames", reader.last_error)
    if tally.clips > clips_before:
        if reader.stopped:
            tally.skip(item.path, reader.stopped, reader.last_error, partial=True)
        elif length is not None and seen < TRUNCATED_FRACTION * length * rate:
            tally.skip(item.path, "truncated", f"{seen} of {round(length * rate)} frames decoded", partial=True)


def _windows(planned, open_end: bool, max_frames: int):
    """The planned windows; without shot cuts, the last grows to max_frames and more follow as frames do."""
    planned = list(planned)
    if not open_end:
        yield from planned
        return
    if planned:
        shot, a, _ = planned[-1]
        yield from planned[:-1]
        yield shot, a, a + max_frames
        nxt = a + max_frames
    else:
        nxt = 0
    for i in count():
        yield 0, nxt + i * max_frames, nxt + (i + 1) * max_frames


class _ClipWriter:
    """The frames of one video -> one clip per window, each kept or counted as its window ends."""

    def __init__(self, item: Item, caption: str, rate: Fraction, start: float, min_frames: int,
                 opts: IngestOptions, shards: ChunkShards, tally: Tally):
        self.item, self.caption, self.rate, self.start, self.min_frames = item, caption, rate, start, min_frames
        self.opts, self.shards, self.tally = opts, shards, tally

    def run(self, reader: CfrReader, windows, check_first: bool) -> int:
        """Stream the reader's frames into the windows' clips; returns the frames decoded."""
        window = next(windows, None)
        clip: ClipEncoder | None = None
        seen = 0
        try:
            for k, frame, damaged in reader:
                seen = k + 1
                if k == 0 and check_first:                      # the header did not give the size
                    check_size(frame.shape[1], frame.shape[0], self.opts)
                while window is not None and k >= window[2]:
                    self._finish(clip, window)
                    clip, window = None, next(windows, None)
                if window is None:
                    break
                if k < window[1]:
                    continue                                    # between windows (a dropped short shot)
                if clip is None:
                    clip = ClipEncoder(float(self.rate))
                clip.add(frame, damaged)
            self._finish(clip, window)
            clip = None
        finally:                                                # an error mid-clip: drop it
            if clip is not None:
                clip.close()
        return seen

    def _finish(self, clip: ClipEncoder | None, window) -> None:
        if clip is None:
            return
        shot, first, _ = window
        where, path, tally = f"shot {shot}, frames {first}..{first + clip.frames}", self.item.path, self.tally
        if clip.frames < self.min_frames:
            tally.skip(path, "too_short", f"{where}: under the --clip-seconds minimum")
        elif clip.damaged:
            tally.skip(path, "decode_error", f"{where}: damaged frames ({clip.frames} dropped)")
        elif clip.frames > 1 and clip.motion < self.opts.min_motion:
            tally.skip(path, "static", f"{where}: motion {clip.motion:.3f} under --min-motion {self.opts.min_motion}")
        else:
            height, width = clip.size
            meta = {"caption": self.caption, "fps": float(self.rate), "frames": clip.frames, "height": height,
                    "width": width, "source": path, "start": round(self.start + float(first / self.rate), 6),
                    "end": round(self.start + float((first + clip.frames) / self.rate), 6), "shot": shot,
                    "motion": round(clip.motion, 4)}
            self.shards.write(sample(self.shards.next_key(), meta, clip.finish(), "mp4"))
            tally.clips += 1
            tally.frames += clip.frames
            tally.seconds += clip.frames / float(self.rate)
        clip.close()
