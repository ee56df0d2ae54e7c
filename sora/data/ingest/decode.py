"""Decoding a source with PyAV as a stream of constant-rate frames, upright, never the whole video.

- Frame size is checked against max_pixels before any frame is decoded (the container header), and
  the decoder itself refuses a bigger frame (FFmpeg's max_pixels), so a decompression bomb costs nothing.
- The display rotation in the container (a phone's portrait clip) is applied to every frame.
- Variable frame rate becomes constant by the frames' timestamps: output slot k at time k / rate
  shows the source frame nearest in time (FFmpeg's fps filter does the same), so a 2 s clip at
  29.97 fps gives 60 frames whatever its timestamps look like.
- A packet that fails to decode, or a frame the decoder marks corrupt, marks the frames around it
  damaged; the clip that holds them is dropped by the caller, the rest of the video is kept.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator

import av
import numpy as np
from PIL import Image, ImageOps

MAX_DECODE_ERRORS = 32     # give up on a source after this many failed packets
MAX_SOURCE_FPS = 480       # higher "frame rates" in headers are clocks (1000, 90000), not rates


class Skip(Exception):
    """This source (or clip) is skipped for `reason` (a short name counted in the report)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Probe:
    width: int                   # displayed size before rotation (anamorphic pixels widened); 0: unknown
    height: int
    rate: Fraction               # average source frame rate
    duration: float | None       # seconds, from the header (None when unknown)
    codec: str
    sar: Fraction                # sample (pixel) aspect ratio


def _open(path: str, max_pixels: int):
    """(container, video stream) with the decoder capped at max_pixels; Skip when there is none."""
    try:
        # max_pixels here also guards the probing decode that avformat_find_stream_info may run
        container = av.open(path, options={"max_pixels": str(max_pixels)})
    except av.EOFError as e:          # a header and then nothing: a 0-frame stream, or cut after its header
        raise Skip("no_frames", f"the file ends before its first frame: {e}") from None
    except av.FFmpegError as e:
        raise Skip("decode_error", f"cannot open: {e}") from None
    if not container.streams.video:
        detail = f"{len(container.streams.audio)} audio, {len(container.streams.subtitles)} subtitle streams"
        container.close()
        raise Skip("no_video_stream", detail)
    stream = container.streams.video[0]
    stream.codec_context.options = {"max_pixels": str(max_pixels)}   # the decoder refuses a bigger frame
    return container, stream


def probe(path: str, max_pixels: int) -> Probe:
    """Header facts of the first video stream; Skip(too_large) before decoding a frame that is too big."""
    container, stream = _open(path, max_pixels)
    with container:
        cc = stream.codec_context
        w, h = cc.width or 0, cc.height or 0
        if w * h > max_pixels:
            raise Skip("too_large", f"frame {w}x{h} is over --max-pixels {max_pixels}")
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        counted = Fraction(stream.frames / duration).limit_denominator(1001) if stream.frames and duration else None
        # a rate of 1000 is usually a container's millisecond clock, not the video's frame rate
        rate = next((r for r in (stream.average_rate, counted, stream.guessed_rate, stream.base_rate)
                     if r and 0 < r <= MAX_SOURCE_FPS), None)
        if rate is None:
            raise Skip("decode_error", f"no plausible frame rate in the header (average {stream.average_rate})")
        sar = stream.sample_aspect_ratio or cc.sample_aspect_ratio
        sar = Fraction(sar) if sar and 0.1 <= sar <= 10 else Fraction(1)     # absent, or absurd: square
        return Probe(round(w * sar), h, Fraction(rate), duration if duration and duration > 0 else None,
                     cc.name, sar)


def output_rate(source: Fraction, fps_max: float) -> Fraction:
    """The stored clip's frame rate: the source's (as a small fraction: 24000/1001 stays exact), capped."""
    rate = Fraction(source).limit_denominator(1001)
    return rate if rate <= fps_max else Fraction(fps_max).limit_denominator(1001)


def quarter_turns(rotation: float) -> int:
    """Counter-clockwise quarter turns (np.rot90's k) that display a frame with this DISPLAYMATRIX angle."""
    return int(round((rotation or 0) / 90.0)) % 4


class CfrReader:
    """Constant-rate frames of one source, [start, end) seconds, one at a time.

    Iterating yields (k, array, damaged). `convert(av_frame, turns) -> array` makes the array
    (called once per source frame used). After the loop: `errors` (packets that failed), `stopped`
    (why decoding ended early, '' when the stream simply ended), `turns` (the rotation applied).
    """

    def __init__(self, path: str, rate: Fraction, max_pixels: int, convert: Callable,
                 start: float = 0.0, end: float | None = None):
        self.path, self.rate, self.max_pixels, self.convert = path, rate, max_pixels, convert
        self.start, self.end = start, end
        self.errors, self.stopped, self.turns, self.last_error = 0, "", 0, ""

    def _decoded(self, container, stream) -> Iterator[tuple[Fraction, av.VideoFrame, bool]]:
        """(time in seconds from the stream start, frame, damaged) in presentation order."""
        tb = stream.time_base
        origin = Fraction(stream.start_time) * tb if stream.start_time is not None else None
        if self.start > 2.0 and origin is not None:   # jump near a manifest clip's start, not decode all before it
            container.seek(int((self.start - 1.0) / tb) + stream.start_time, stream=stream, backward=True)
        damaged, last, got_frame = False, None, False
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as e:           # the file ends or breaks mid-way: keep what came before
                self.stopped, self.last_error = "decode_error", f"reading: {e}"
                return
            try:
                frames = packet.decode()
            except av.FFmpegError as e:
                if e.errno == errno.EINVAL and not got_frame:   # FFmpeg's max_pixels refusal
                    raise Skip("too_large", f"the decoder refused a frame over --max-pixels {self.max_pixels}") from None
                self.errors += 1
                self.last_error = str(e)
                damaged = True
                if self.errors > MAX_DECODE_ERRORS:
                    self.stopped = "decode_error"
                    return
                continue
            for frame in frames:
                if frame.width * frame.height > self.max_pixels:
                    raise Skip("too_large", f"frame {frame.width}x{frame.height} is over --max-pixels {self.max_pixels}")
                if frame.pts is not None:
                    t = Fraction(frame.pts) * tb
                else:
                    t = last + 1 / self.rate if last is not None else Fraction(0)
                if origin is None:
                    origin = t
                if not got_frame:
                    self.turns = quarter_turns(frame.rotation)
                    got_frame = True
                yield t - origin, frame, damaged or bool(frame.is_corrupt)
                damaged, last = False, t

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, bool]]:
        container, stream = _open(self.path, self.max_pixels)
        start = Fraction(self.start).limit_denominator(1_000_000)
        stop = Fraction(self.end).limit_denominator(1_000_000) if self.end is not None else None
        k = 0

        def slot(i):
            return start + i / self.rate

        with container:
            prev = None              # [time, frame, damaged, array or None]
            for t, frame, damaged in self._decoded(container, stream):
                if prev is not None and t <= prev[0]:
                    prev[2] = prev[2] or damaged
                    continue                        # a repeated / out-of-order timestamp shows nothing new
                if prev is not None:
                    mid = (prev[0] + t) / 2
                    while slot(k) < mid and (stop is None or slot(k) < stop):
                        if prev[3] is None:
                            prev[3] = self.convert(prev[1], self.turns)
                        yield k, prev[3], prev[2]
                        k += 1
                    if stop is not None and slot(k) >= stop:
                        return
                prev = [t, frame, damaged, None]
            if prev is None:
                return
            duration = Fraction(prev[1].duration) * stream.time_base if prev[1].duration else 1 / stream_rate(stream, self.rate)
            limit = prev[0] + duration / 2
            while slot(k) < limit and (stop is None or slot(k) < stop):
                if prev[3] is None:
                    prev[3] = self.convert(prev[1], self.turns)
                yield k, prev[3], prev[2]
                k += 1


def stream_rate(stream, fallback: Fraction) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate
    return Fraction(rate) if rate and rate > 0 else fallback


# ---------------------------------------------------------------- sizes and conversion

def display_size(width: int, height: int, turns: int) -> tuple[int, int]:
    return (height, width) if turns % 2 else (width, height)


def stored_size(width: int, height: int, max_side: int, even: bool) -> tuple[int, int]:
    """(W, H) to store a (width, height) display frame: short side capped at max_side, aspect kept;
    `even` (h264 yuv420p) rounds down to even sizes (an odd native size loses its last row/column)."""
    scale = min(1.0, max_side / min(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    if even:
        w, h = w - w % 2, h - h % 2
    return w, h


def rgb_converter(max_side: int, sar: Fraction = Fraction(1)) -> Callable:
    """convert(av_frame, turns) -> uint8 [H, W, 3] RGB, upright, square pixels (an anamorphic frame,
    sample aspect ratio `sar`, is widened), at the stored size the first frame fixes."""
    size: list[tuple[int, int]] = []

    def convert(frame: av.VideoFrame, turns: int) -> np.ndarray:
        dw, dh = display_size(max(1, round(frame.width * sar)), frame.height, turns)
        if not size:
            size.append(stored_size(dw, dh, max_side, even=True))
        out_w, out_h = size[0]
        scale = max(out_w / dw, out_h / dh)        # cover the stored size, aspect kept; the crop drops the rest
        tw, th = max(out_w, round(dw * scale)), max(out_h, round(dh * scale))
        cw, ch = (th, tw) if turns % 2 else (tw, th)                  # before rotation
        if (cw, ch) == (frame.width, frame.height):
            arr = frame.to_ndarray(format="rgb24")                    # [H, W, 3]
        else:     # resize in swscale (area) before rotating: fewer bytes move
            arr = frame.reformat(width=cw, height=ch, format="rgb24", interpolation="AREA").to_ndarray()
        arr = np.rot90(arr, turns) if turns else arr
        return np.ascontiguousarray(arr[:out_h, :out_w])             # an odd last row / column goes

    return convert


def small_bgr(frame: av.VideoFrame, turns: int, width: int = 128) -> np.ndarray:
    """A small BGR copy for the shot detector (rotation does not change where cuts are)."""
    scale = min(1.0, width / frame.width)
    w, h = max(2, round(frame.width * scale)), max(2, round(frame.height * scale))
    return frame.reformat(width=w, height=h, format="bgr24", interpolation="AREA").to_ndarray()


def decode_still(path: str, max_pixels: int, max_side: int) -> np.ndarray:
    """A still image -> uint8 [H, W, 3] RGB, EXIF orientation applied, short side capped at max_side."""
    try:
        with Image.open(path) as im:                         # lazy: reads the header only
            w, h = im.size
            if w * h > max_pixels:
                raise Skip("too_large", f"image {w}x{h} is over --max-pixels {max_pixels}")
            im = ImageOps.exif_transpose(im).convert("RGB")
    except Skip:
        raise
    except Image.DecompressionBombError as e:     # Pillow's own limit, met before ours when ours is higher
        raise Skip("too_large", str(e)) from None
    except Exception as e:      # UnidentifiedImageError, OSError (truncated), ...
        raise Skip("decode_error", f"{type(e).__name__}: {e}") from None
    w, h = stored_size(im.width, im.height, max_side, even=False)
    if (w, h) != im.size:
        im = im.resize((w, h), Image.Resampling.BOX)
    return np.asarray(im, dtype=np.uint8)    # [H, W, 3]
