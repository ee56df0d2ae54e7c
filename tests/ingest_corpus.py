"""A small corpus of real-codec files for the `sora ingest` tests, made with PyAV's FFmpeg encoders.

Every picture has a red block in its top-left corner *as displayed* (so orientation can be checked
after rotation), a shot colour, and a moving white square (motion). Files are tiny (64x48-ish, 1-2 s).
`build(dir)` writes good files (each with its caption sidecar) and bad ones, and returns what a
correct ingest must find: per good file its caption, display size, frame rate and frame count, and
per bad file the reason it must be skipped with.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from fractions import Fraction

import av
import numpy as np
from PIL import Image

os.environ.setdefault("SVT_LOG", "1")          # SVT-AV1: errors only

SHOT_COLOURS = ((40, 90, 200), (220, 200, 40), (30, 160, 60), (200, 60, 200), (250, 250, 250))
RED = (255, 0, 0)


def picture(t: int, height: int, width: int, colour=SHOT_COLOURS[0]) -> np.ndarray:
    """uint8 [H, W, 3]: background `colour`, red block top-left, white square moving right with t."""
    img = np.empty((height, width, 3), np.uint8)
    img[:] = colour
    bh, bw = max(2, height // 4), max(2, width // 4)
    img[:bh, :bw] = RED
    s = max(2, min(height, width) // 5)
    x = (bw + 2 + 2 * t) % max(1, width - s)
    y = height // 2
    img[y:y + s, x:x + s] = 255
    return img


def red_corner(frame: np.ndarray) -> str:
    """Which corner holds the red block: 'tl', 'tr', 'bl' or 'br' (checks orientation)."""
    h, w = frame.shape[:2]
    corners = {"tl": frame[: h // 8 + 1, : w // 8 + 1], "tr": frame[: h // 8 + 1, -(w // 8 + 1):],
               "bl": frame[-(h // 8 + 1):, : w // 8 + 1], "br": frame[-(h // 8 + 1):, -(w // 8 + 1):]}

    def redness(block):
        b = block.reshape(-1, 3).astype(float).mean(axis=0)
        return b[0] - (b[1] + b[2]) / 2
    return max(corners, key=lambda k: redness(corners[k]))


def encode(path: str, frames, rate, codec: str, fmt: str, pix_fmt: str, *, rotation: int | None = None,
           audio: bool = False, pts: list[int] | None = None, time_base: Fraction | None = None,
           options: dict | None = None, sar: Fraction | None = None) -> None:
    """Write frames (uint8 [H, W, 3] each) with one of FFmpeg's encoders. `rotation`: display matrix
    angle (counter-clockwise degrees, as PyAV reads it back); `pts` with `time_base`: variable timing;
    `sar`: the sample aspect ratio (anamorphic pixels)."""
    frames = list(frames)
    with av.open(path, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=Fraction(rate))
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = pix_fmt
        if time_base is not None:      # the encoder's too, or it rounds the timestamps to 1 / rate
            s.time_base = s.codec_context.time_base = time_base
        if options:
            s.options = options
        if rotation is not None:
            s.set_display_rotation(rotation)
        if sar is not None:
            s.codec_context.sample_aspect_ratio = sar
        a = None
        if audio:
            a = c.add_stream("aac", rate=16000)
            a.layout = "mono"
        # with explicit timestamps, each packet lasts until the next frame (the last as long as the one before)
        lasts = {} if pts is None else dict(zip(pts, np.diff(pts, append=2 * pts[-1] - pts[-2]).tolist()))

        def mux(packets):
            for p in packets:
                if p.pts in lasts:
                    p.duration = lasts[p.pts]
                c.mux(p)
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=pix_fmt)
            vf.pts = pts[i] if pts is not None else i
            if time_base is not None:
                vf.time_base = time_base
            mux(s.encode(vf))
        mux(s.encode())
        if a is not None:
            seconds = len(frames) / float(rate)
            n = int(seconds * 16000)
            tone = (0.2 * np.sin(np.arange(n) * 2 * np.pi * 440 / 16000)).astype(np.float32)[None]
            for i in range(0, n, 1024):
                af = av.AudioFrame.from_ndarray(tone[:, i:i + 1024], format="fltp", layout="mono")
                af.sample_rate, af.pts = 16000, i
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)


def clip(n: int, height: int = 48, width: int = 64, colour=SHOT_COLOURS[0]) -> list[np.ndarray]:
    return [picture(t, height, width, colour) for t in range(n)]


def audio_only(path: str) -> None:
    with av.open(path, "w", format="mp4") as c:
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        for i in range(0, 16000, 1024):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = 16000, i
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode():
            c.mux(p)


def png_bomb(path: str, side: int = 20000) -> None:
    """A 100 kB PNG whose header says side x side (a decompression bomb: 400 Mpx)."""
    raw = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    body = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)     # 1-bit greyscale
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def caption_for(name: str) -> str:
    return f"a test clip called {name}"


def build(root: str) -> dict:
    """Write the corpus under root (videos in root/videos, sub-folders included); return expectations."""
    v = os.path.join(root, "videos")
    os.makedirs(os.path.join(v, "phone"), exist_ok=True)
    os.makedirs(os.path.join(v, "bad"), exist_ok=True)
    good: dict[str, dict] = {}

    def add(name, frames, rate, codec, fmt, pix, *, display=(48, 64), sidecar="txt", **kw):
        path = os.path.join(v, name)
        encode(path, frames, rate, codec, fmt, pix, **kw)
        n = len(frames) if "pts" not in kw else None
        good[name] = {"caption": caption_for(name), "size": display, "fps": float(Fraction(rate)), "frames": n,
                      "corner": "tl"}
        side(path, caption_for(name), sidecar)

    add("h264_bframes_audio.mp4", clip(48), Fraction(24000, 1001), "libx264", "mp4", "yuv420p", audio=True,
        options={"bframes": "3", "preset": "medium"})
    add("hevc.mkv", clip(30), Fraction(30000, 1001), "libx265", "matroska", "yuv420p", sidecar="json",
        options={"x265-params": "log-level=error"})
    add("vp9.webm", clip(30), 30, "libvpx-vp9", "webm", "yuv420p")
    add("av1.mkv", clip(24), 24, "libsvtav1", "matroska", "yuv420p")
    add("mpeg4_odd.avi", clip(25, 49, 65), 25, "mpeg4", "avi", "yuv420p", display=(48, 64))   # 65x49 -> 64x48
    add("prores.mov", clip(24), 24, "prores_ks", "mov", "yuv422p10le")
    add("mjpeg_60fps.avi", clip(60, 38, 50), 60, "mjpeg", "avi", "yuvj420p", display=(38, 50))
    # a phone's portrait clip: stored landscape 64x48, displayed 48x64 after a 90 degree clockwise turn
    upright = clip(30, 64, 48)
    add("phone/portrait.mp4", [np.ascontiguousarray(np.rot90(f, 1)) for f in upright], 30, "libx264", "mp4",
        "yuv420p", rotation=-90, display=(64, 48))
    add("phone/portrait_ccw.mov", [np.ascontiguousarray(np.rot90(f, -1)) for f in upright], 30, "libx264", "mov",
        "yuv420p", rotation=90, display=(64, 48))
    add("phone/upside_down.mp4", [np.ascontiguousarray(np.rot90(f, 2)) for f in clip(30)], 30, "libx264", "mp4",
        "yuv420p", rotation=180)
    # anamorphic: 32x48 coded pixels twice as wide as tall (sample aspect ratio 2:1), shown 64x48
    add("anamorphic.mp4", [np.ascontiguousarray(f[:, ::2]) for f in clip(24)], 24, "libx264", "mp4", "yuv420p",
        sar=Fraction(2))
    # variable frame rate: 20 frames 50 ms apart, then 10 frames 100 ms apart (2 s, 15 fps on average);
    # frame i's square sits at x = 2 i, so each output frame shows which source frame it came from
    vfr_pts = [50 * i for i in range(20)] + [1000 + 100 * i for i in range(10)]
    add("vfr.mkv", clip(30), 15, "libx264", "matroska", "yuv420p", pts=vfr_pts, time_base=Fraction(1, 1000))
    good["vfr.mkv"].update(frames=30, vfr_pts=vfr_pts)
    # several hard cuts: 4 shots of 1 s each (24 fps), very different colours
    shots = [f for k in range(4) for f in clip(24, colour=SHOT_COLOURS[k])]
    add("cuts.mp4", shots, 24, "libx264", "mp4", "yuv420p")
    good["cuts.mp4"]["shots"] = 4
    # animated gif: 10 frames at 10 fps
    gif = [Image.fromarray(f) for f in clip(10)]
    gif[0].save(os.path.join(v, "anim.gif"), save_all=True, append_images=gif[1:], duration=100, loop=0)
    side(os.path.join(v, "anim.gif"), caption_for("anim.gif"))
    good["anim.gif"] = {"caption": caption_for("anim.gif"), "size": (48, 64), "fps": 10.0, "frames": 10, "corner": "tl"}
    # still images: png, webp (odd size), and a jpg whose EXIF says "rotate 90 clockwise to display"
    for name, (h, w), kw in (("still.png", (30, 40), {}), ("still_odd.webp", (21, 33), {"lossless": True})):
        Image.fromarray(picture(0, h, w)).save(os.path.join(v, name), **kw)
        side(os.path.join(v, name), caption_for(name))
        good[name] = {"caption": caption_for(name), "size": (h, w), "fps": 8.0, "frames": 1, "corner": "tl"}
    im = Image.fromarray(np.ascontiguousarray(np.rot90(picture(0, 40, 30), 1)))    # stored 30x40 landscape
    exif = Image.Exif()
    exif[0x0112] = 6                                                                # orientation: rotate 90 CW
    im.save(os.path.join(v, "phone", "photo.jpg"), exif=exif, quality=95)
    side(os.path.join(v, "phone", "photo.jpg"), caption_for("phone/photo.jpg"))
    good["phone/photo.jpg"] = {"caption": caption_for("phone/photo.jpg"), "size": (40, 30), "fps": 8.0,
                               "frames": 1, "corner": "tl"}

    bad = build_bad(os.path.join(v, "bad"))
    return {"videos": v, "good": good, "bad": bad}


def side(path: str, caption: str, kind: str = "txt") -> None:
    stem = os.path.splitext(path)[0]
    if kind == "txt":
        with open(stem + ".txt", "w", encoding="utf-8") as f:
            f.write(caption + "\n")
    else:
        with open(stem + ".json", "w", encoding="utf-8") as f:
            json.dump({"caption": caption}, f)


def build_bad(d: str) -> dict[str, str]:
    """Each bad input, captioned so that only its badness can stop it; returns name -> reason."""
    bad: dict[str, str] = {}

    def named(name, reason, caption=True):
        bad[name] = reason
        if caption:
            side(os.path.join(d, name), caption_for(name))
        return os.path.join(d, name)

    open(named("empty.mp4", "empty_file"), "wb").close()
    with open(named("text.mp4", "decode_error"), "w") as f:
        f.write("this is a text file, not a video\n" * 20)
    # truncated right after its header: moov first (faststart), the media data cut off
    path = named("truncated_after_header.mp4", "no_frames")
    encode_to(path, clip(24), 24, movflags="faststart")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:data.find(b"mdat") + 4])
    # moov at the end (the default): cut in half, nothing tells FFmpeg where the frames are
    path = named("truncated_half.mp4", "decode_error")
    encode_to(path, clip(24), 24)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    audio_only(named("audio_only.mp4", "no_video_stream"))
    with av.open(named("zero_frames.mkv", "no_frames"), "w", format="matroska") as c:    # a stream, no frame
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()
    png_bomb(named("bomb.png", "too_large"))
    encode(named("nocaption.mp4", "missing_caption", caption=False), clip(12), 24, "libx264", "mp4", "yuv420p")
    path = named("latin1_caption.mp4", "non_utf8", caption=False)
    encode(path, clip(12), 24, "libx264", "mp4", "yuv420p")
    with open(os.path.splitext(path)[0] + ".txt", "wb") as f:
        f.write("un caf\u00e9 cr\u00e8me".encode("latin-1"))
    encode(named("tiny.mp4", "too_small"), clip(12, 4, 6), 24, "libx264", "mp4", "yuv420p")
    return bad


def encode_to(path: str, frames, rate, movflags: str | None = None) -> None:
    """libx264 mp4 (movflags=faststart puts the header before the media data)."""
    opts = {"movflags": movflags} if movflags else {}
    with av.open(path, "w", format="mp4", options=opts) as c:
        s = c.add_stream("libx264", rate=Fraction(rate))
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def corrupt_middle(path: str, seed: int = 0) -> None:
    """Overwrite a stretch in the middle of the file with random bytes (a damaged download)."""
    data = bytearray(open(path, "rb").read())
    rng = np.random.default_rng(seed)
    a = len(data) // 2
    data[a:a + len(data) // 10] = rng.integers(0, 256, len(data) // 10, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(data)
