"""Encode and decode videos/images as bytes. Decoding is capped: inputs come from strangers."""
from __future__ import annotations

import io
import os
from fractions import Fraction
from functools import lru_cache

import av
import numpy as np
from PIL import Image


class VideoDecodeError(ValueError):
    """Bytes that are not a decodable video/image (corrupt, empty, or over a size cap)."""


class FrameTooLargeError(VideoDecodeError):
    """Frame size above the caller's max_pixels; raised before any frame is decoded."""


@lru_cache(maxsize=None)
def _video_codec() -> str:
    available = av.codecs_available
    for name in ("libx264", "mpeg4"):
        if name in available:
            return name
    raise RuntimeError("PyAV has neither libx264 nor mpeg4 encoders")


def _check_frames(frames: np.ndarray, ndim: int) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != ndim or frames.shape[-1] != 3:
        shape = "[T, H, W, 3]" if ndim == 4 else "[H, W, 3]"
        got = getattr(frames, "shape", type(frames)), getattr(frames, "dtype", None)
        raise ValueError(f"expected uint8 {shape}; got shape/dtype {got}")


def _rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> uint8 [H*3/2, W] planar yuv420p (BT.601, limited range: FFmpeg's untagged default).

    Done in numpy so the encoded bytes depend only on this code and the encoder, not on swscale's
    CPU-specific paths: the dataset must be byte-identical per seed.
    """
    h, w, _ = frame.shape
    rgb = frame.astype(np.float32)  # [H, W, 3]
    y = rgb @ np.array([0.256788, 0.504129, 0.097906], np.float32) + 16.0  # [H, W]
    rgb2 = rgb.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))  # [H/2, W/2, 3] chroma is 2x2 subsampled
    u = rgb2 @ np.array([-0.148223, -0.290993, 0.439216], np.float32) + 128.0  # [H/2, W/2]
    v = rgb2 @ np.array([0.439216, -0.367788, -0.071427], np.float32) + 128.0
    planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, u, v)]
    return np.concatenate([p.reshape(-1) for p in planes]).reshape(h * 3 // 2, w)  # PyAV's flat Y|U|V layout


class Mp4Encoder:
    """Streaming uint8 [H, W, 3] frames -> mp4 bytes (h264 yuv420p), one frame at a time, so a long
    clip never sits in memory as raw frames. `crf` 10 is near-lossless (flat synthetic colours survive);
    real footage needs less (`sora ingest` uses 18, visually lossless). `exact`: RGB -> YUV in numpy,
    so the bytes do not depend on the CPU (the synthetic dataset is byte-identical per seed);
    otherwise FFmpeg's swscale does it, several times faster (same on one machine, not across CPUs)."""

    def __init__(self, height: int, width: int, fps: float, crf: int = 10, exact: bool = True):
        if height % 2 or width % 2 or height < 2 or width < 2:
            raise ValueError(f"mp4 needs even H, W >= 2 (yuv420p); got H={height}, W={width}")
        self.height, self.width, self.frames, self._open, self.exact = height, width, 0, True, exact
        self._buf = io.BytesIO()
        self._container = av.open(self._buf, mode="w", format="mp4")
        codec = _video_codec()
        self._stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.thread_count = 1  # tiny frames: threads cost more than they save
        if codec == "libx264":
            # mbtree's lookahead gave run-to-run different bytes on these tiny clips; without it (and
            # B-frames) x264 is deterministic, which the per-seed byte-identical dataset needs.
            self._stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0:bframes=0"}
        else:
            self._stream.bit_rate = 8_000_000
            self._stream.options = {"qmin": "1", "qmax": "3"}  # near-constant high quality

    def add(self, frame: np.ndarray) -> None:
        _check_frames(frame, 3)
        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame {frame.shape[:2]} differs from the stream's {(self.height, self.width)}")
        if self.exact:
            vf = av.VideoFrame.from_ndarray(_rgb_to_yuv420p(frame), format="yuv420p")
        else:
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")   # BT.601, limited
        vf.pts = self.frames
        self.frames += 1
        for packet in self._stream.encode(vf):
            self._container.mux(packet)

    def finish(self) -> bytes:
        """Flush delayed frames, close the file, return its bytes."""
        if self.frames < 1:
            raise ValueError("mp4 needs at least one frame")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self.close()
        return self._buf.getvalue()

    def close(self) -> None:
        """Close the file (after finish(), or to drop an unfinished clip)."""
        if self._open:
            self._open = False
            self._container.close()


def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """uint8 [T, H, W, 3] -> mp4 bytes (yuv420p, near-lossless so flat colours survive)."""
    _check_frames(frames, 4)
    t, h, w, _ = frames.shape
    if t < 1 or h % 2 or w % 2:
        raise ValueError(f"mp4 needs T >= 1 and even H, W (yuv420p); got T={t}, H={h}, W={w}")
    encoder = Mp4Encoder(h, w, fps)
    for frame in frames:
        encoder.add(frame)
    return encoder.finish()


def encode_png(frame: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> png bytes."""
    _check_frames(frame, 3)
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def decode_video(data: bytes, max_frames: int = 256, max_pixels: int = 4096 * 4096) -> np.ndarray:
    """Video bytes -> uint8 [T, H, W, 3], at most max_frames frames."""
    if not data:
        raise VideoDecodeError("empty video payload")
    frames = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise VideoDecodeError("no video stream")
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            if w * h > max_pixels:  # refuse before decoding a single frame
                raise FrameTooLargeError(f"frame {w}x{h} exceeds max_pixels={max_pixels}")
            for frame in container.decode(stream):
                if frame.width * frame.height > max_pixels:  # size may change mid-stream
                    raise FrameTooLargeError(f"frame {frame.width}x{frame.height} exceeds max_pixels={max_pixels}")
                frames.append(frame.to_ndarray(format="rgb24"))  # [H, W, 3]
                if len(frames) >= max_frames:
                    break
    except VideoDecodeError:
        raise
    except Exception as e:  # PyAV/FFmpeg raise many types for bad input
        raise VideoDecodeError(f"cannot decode video: {type(e).__name__}: {e}") from e
    if not frames:
        raise VideoDecodeError("video has zero decodable frames")
    if any(f.shape != frames[0].shape for f in frames):
        raise VideoDecodeError("video frames change size mid-stream")
    return np.stack(frames)  # [T, H, W, 3]


def decode_image(data: bytes, max_pixels: int = 4096 * 4096) -> np.ndarray:
    """Image bytes -> uint8 [1, H, W, 3] (RGB)."""
    if not data:
        raise VideoDecodeError("empty image payload")
    try:
        with Image.open(io.BytesIO(data)) as im:  # lazy: reads the header only
            w, h = im.size
            if w * h > max_pixels:
                raise FrameTooLargeError(f"image {w}x{h} exceeds max_pixels={max_pixels}")
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)  # [H, W, 3]
    except VideoDecodeError:
        raise
    except Exception as e:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
        raise VideoDecodeError(f"cannot decode image: {type(e).__name__}: {e}") from e
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise VideoDecodeError(f"image has unusable shape {arr.shape}")
    return arr[None]  # [1, H, W, 3]


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """Write uint8 [T, H, W, 3] as .mp4 (PyAV) or .gif (Pillow, loops forever)."""
    _check_frames(frames, 4)
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".mp4", ".gif"):
        raise ValueError(f"unsupported video extension {ext!r} for {path!r}; use .mp4 or .gif")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if ext == ".mp4":
        data = encode_mp4(frames, fps)
        with open(path, "wb") as f:
            f.write(data)
    else:
        images = [Image.fromarray(f) for f in frames]
        duration_ms = max(int(round(1000.0 / fps)), 10)
        images[0].save(path, format="GIF", save_all=True, append_images=images[1:], loop=0, duration=duration_ms)
