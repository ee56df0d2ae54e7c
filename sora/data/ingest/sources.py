"""What to ingest: files and directories (recursive) and/or a manifest, as an ordered list of items.

Listing is deterministic (sorted names; SRC arguments and manifest rows in the order given), so every
rank and every re-run sees the same list. Nothing here fails on one bad entry: a missing file, an
unreadable directory or a symlink loop becomes an item that carries its skip reason and is counted
by whoever processes it. Sidecar captions (NAME.txt / NAME.json) are read later, by that worker.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass

from sora.data.ingest.options import IngestError

VIDEO_EXTS = frozenset({"mp4", "m4v", "mkv", "webm", "mov", "avi", "gif", "mpg", "mpeg", "ts", "mts", "m2ts",
                        "flv", "wmv", "3gp", "ogv", "mxf"})
IMAGE_EXTS = frozenset({"png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff"})   # still images: 1-frame samples
PATH_COLUMNS = ("path", "video", "file")
CAPTION_COLUMNS = ("caption", "text")


@dataclass(frozen=True)
class Item:
    path: str                       # absolute, normalised (symlinks not resolved)
    size: int = 0                   # bytes on disk (0 when unknown)
    caption: str | None = None      # from the manifest; None: look for a sidecar
    start: float | None = None      # manifest clip bounds, seconds from the start of the video
    end: float | None = None
    skip: tuple[str, str] | None = None   # (reason, detail) found while listing

    @property
    def is_image(self) -> bool:
        return extension(self.path) in IMAGE_EXTS


def extension(path: str) -> str:
    return os.path.splitext(path)[1][1:].lower()


def is_media(path: str) -> bool:
    ext = extension(path)
    return ext in VIDEO_EXTS or ext in IMAGE_EXTS


def _file_item(path: str, **kw) -> tuple[Item, os.stat_result | None]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Item(path, skip=("not_found", "dangling symlink" if os.path.islink(path) else "no such file"), **kw), None
    except OSError as e:
        return Item(path, skip=("unreadable", f"{type(e).__name__}: {e}"), **kw), None
    return Item(path, size=st.st_size, **kw), st


def _walk(root: str, items: list[Item], seen_files: set, ancestors: tuple) -> None:
    """Media files under directory `root`, sorted by name, following symlinked directories once."""
    try:
        st = os.stat(root)
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        items.append(Item(root, skip=("unreadable", f"{type(e).__name__}: {e}")))
        return
    ident = (st.st_dev, st.st_ino)
    for entry in entries:
        path = os.path.join(root, entry.name)
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError as e:
            items.append(Item(path, skip=("unreadable", f"{type(e).__name__}: {e}")))
            continue
        if is_dir:
            try:
                sub = os.stat(path)
            except OSError as e:
                items.append(Item(path, skip=("unreadable", f"{type(e).__name__}: {e}")))
                continue
            if (sub.st_dev, sub.st_ino) in ancestors + (ident,):
                items.append(Item(path, skip=("symlink_loop", f"leads back to {os.path.realpath(path)}")))
                continue
            _walk(path, items, seen_files, ancestors + (ident,))
        elif is_media(path):
            _add_file(path, items, seen_files)


def _add_file(path: str, items: list[Item], seen_files: set, **kw) -> None:
    item, st = _file_item(path, **kw)
    if st is not None:
        ident = (st.st_dev, st.st_ino, kw.get("start"), kw.get("end"))
        if ident in seen_files:
            item = Item(path, skip=("duplicate", "the same file was listed before"), **kw)
        seen_files.add(ident)
    items.append(item)


def list_items(sources: list[str], captions: str | None = None) -> list[Item]:
    """Manifest rows first (in order), then the media files under `sources` the manifest does not name."""
    items: list[Item] = []
    seen: set = set()
    named: set[str] = set()
    if captions:
        for path, caption, start, end, skip in read_manifest(captions):
            named.add(path)
            if skip is not None:
                items.append(Item(path, skip=skip))
            else:
                _add_file(path, items, seen, caption=caption, start=start, end=end)
    for src in sources:
        src = os.path.abspath(src)
        if os.path.isdir(src):
            found: list[Item] = []
            _walk(src, found, seen, ())
            items += [i for i in found if i.path not in named]
        elif src not in named:
            _add_file(src, items, seen)
    return items


def sources_digest(items: list[Item]) -> str:
    """Identifies the listing: a re-run into the same DIR must see the same items."""
    h = hashlib.sha256()
    for i in items:
        h.update(json.dumps([i.path, i.size, i.caption, i.start, i.end, i.skip], ensure_ascii=True).encode())
    return h.hexdigest()


# ---------------------------------------------------------------- captions

def sidecar_caption(path: str) -> tuple[str | None, tuple[str, str] | None]:
    """(caption, None) from NAME.txt or NAME.json beside NAME.mp4 (or NAME.mp4.txt / .json), else
    (None, (reason, detail))."""
    stem = os.path.splitext(path)[0]
    for side in (f"{stem}.txt", f"{stem}.json", f"{path}.txt", f"{path}.json"):
        ext = extension(side)
        if not os.path.isfile(side):
            continue
        try:
            with open(side, "rb") as f:
                data = f.read(1 << 20)
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, ("non_utf8", f"{os.path.basename(side)}: {e}")
        except OSError as e:
            return None, ("unreadable", f"{os.path.basename(side)}: {e}")
        if ext == "json":
            try:
                meta = json.loads(text)
            except ValueError as e:
                return None, ("bad_caption", f"{os.path.basename(side)}: {e}")
            caption = next((meta[k] for k in CAPTION_COLUMNS if k in meta), None) if isinstance(meta, dict) else None
            if not isinstance(caption, str):
                return None, ("bad_caption", f"{os.path.basename(side)} has no string 'caption' (or 'text')")
            text = caption
        if _bad_text(text):
            return None, ("non_utf8", f"{os.path.basename(side)}: lone surrogate")
        if text.strip():
            return text.strip(), None
    return None, ("missing_caption", "")


def _bad_text(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _number(value, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{column} {value!r} is not a number") from None
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{column} {value!r} is not a finite number >= 0")
    return x


def _rows(path: str) -> list[dict]:
    ext = extension(path)
    if ext in ("csv", "tsv"):
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="surrogateescape")   # a bad row is counted, not fatal
        return list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if ext == "tsv" else ","))
    if ext in ("jsonl", "ndjson"):
        rows = []
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.decode("utf-8", errors="surrogateescape"))
                except ValueError as e:
                    raise IngestError(f"--captions {path}: line {n} is not JSON ({e})") from None
                if not isinstance(row, dict):
                    raise IngestError(f"--captions {path}: line {n} is not a JSON object")
                rows.append(row)
        return rows
    if ext == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise IngestError("Parquet manifests need pyarrow: pip install pyarrow") from None
        return pq.read_table(path).to_pylist()
    raise IngestError(f"--captions {path}: unknown manifest type {ext!r} (use .csv, .tsv, .jsonl or .parquet)")


def read_manifest(path: str):
    """(abs path, caption or None, start, end, skip) per row; relative paths are relative to the manifest."""
    if not os.path.isfile(path):
        raise IngestError(f"--captions {path}: no such file")
    rows = _rows(path)
    if not rows:
        raise IngestError(f"--captions {path}: no rows")
    columns = {str(k).strip().lower(): k for k in rows[0].keys()}
    path_col = next((columns[c] for c in PATH_COLUMNS if c in columns), None)
    caption_col = next((columns[c] for c in CAPTION_COLUMNS if c in columns), None)
    if path_col is None or caption_col is None:
        raise IngestError(f"--captions {path}: needs a path column ({'/'.join(PATH_COLUMNS)}) and a caption column "
                          f"({'/'.join(CAPTION_COLUMNS)}); found {sorted(columns)}")
    start_col, end_col = columns.get("start"), columns.get("end")
    base = os.path.dirname(os.path.abspath(path))
    for row in rows:
        rel = row.get(path_col)
        rel = rel.decode("utf-8", errors="surrogateescape") if isinstance(rel, bytes) else str(rel or "")
        full = os.path.normpath(os.path.join(base, os.path.expanduser(rel)))
        caption = row.get(caption_col)
        if isinstance(caption, bytes):
            caption = caption.decode("utf-8", errors="surrogateescape")
        if caption is not None and not isinstance(caption, str):
            caption = str(caption)
        if caption is not None and _bad_text(caption):
            yield full, None, None, None, ("non_utf8", "manifest caption")
            continue
        try:
            start = _number(row.get(start_col), "start") if start_col else None
            end = _number(row.get(end_col), "end") if end_col else None
        except ValueError as e:
            yield full, None, None, None, ("bad_range", str(e))
            continue
        if start is not None and end is not None and end <= start:
            yield full, None, None, None, ("bad_range", f"end {end} <= start {start}")
            continue
        yield full, (caption.strip() or None) if caption else None, start, end, None
