"""Running an ingest: the listing cut into chunks, chunks over ranks and worker processes, resume.

- Chunks: consecutive items, at most `samples_per_shard` of them and CHUNK_BYTES of source. Chunk c
  writes SPLIT-cccccc-ppp.tar (so names never collide, whoever writes them) and, when all its
  shards are renamed into place, DIR/.ingest/SPLIT-cccccc.json (its counts). A chunk with that
  record is finished; a re-run skips it and redoes any other from its start. A chunk's bytes depend
  only on its items and the options, so an interrupted and resumed run gives the same shards as an
  uninterrupted one, and so does any number of ranks or workers.
- Ranks: rank r of W (RANK / WORLD_SIZE, as `sora-launch` sets them) takes chunks r::W, like
  `sora preprocess` takes shards; --workers N processes share this rank's chunks.
- DIR/.ingest/SPLIT.options.json records the options and the listing; a re-run with others is
  refused (it would mix two datasets). DIR/ingest_report.json is written by whichever rank finds
  every chunk finished: the last one to finish always does.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

from tqdm import tqdm

from sora.data.atomic import write_json_atomic
from sora.data.ingest.options import IngestError, IngestOptions
from sora.data.ingest.process import ingest_item
from sora.data.ingest.report import Tally, summary_text
from sora.data.ingest.sources import Item, list_items, sources_digest
from sora.data.ingest.writer import ChunkShards

log = logging.getLogger("sora.ingest")

CHUNK_BYTES = 256 << 20
STATE = ".ingest"
REPORT = "ingest_report.json"


def make_chunks(items: list[Item], max_items: int, max_bytes: int = CHUNK_BYTES) -> list[list[Item]]:
    chunks: list[list[Item]] = []
    size = 0
    for item in items:
        if not chunks or len(chunks[-1]) >= max_items or (size + item.size > max_bytes and chunks[-1]):
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += item.size
    return chunks


def _record_path(out: Path, split: str, chunk: int) -> Path:
    return out / STATE / f"{split}-{chunk:06d}.json"


def _finished(out: Path, split: str, chunk: int) -> bool:
    path = _record_path(out, split, chunk)
    if not path.is_file():
        return False
    record = json.loads(path.read_text())
    return all((out / name).is_file() for name in record["shards"])


def run_chunk(args) -> dict:
    """One chunk, start to end, in whichever process: its shards, then its record."""
    chunk, items, opts, out = args
    started = time.perf_counter()
    tally = Tally()
    shards = ChunkShards(os.fspath(out), opts.split, chunk, opts.samples_per_shard)
    try:
        for item in items:
            ingest_item(item, opts, shards, tally)
        names = shards.finish()
    except BaseException:
        shards.abandon()
        raise
    record = {"chunk": chunk, "items": len(items), "shards": names, **tally.as_dict(),
              "wall_s": round(time.perf_counter() - started, 3)}
    write_json_atomic(_record_path(Path(out), opts.split, chunk), record)
    return record


def _check_options(out: Path, opts: IngestOptions, digest: str, n_chunks: int) -> None:
    """Same options and listing as a previous run into DIR, or none before."""
    want = {"options": opts.fingerprint(), "sources": digest, "chunks": n_chunks}
    path = out / STATE / f"{opts.split}.options.json"
    if path.is_file():
        had = json.loads(path.read_text())
        if had != want:
            changed = sorted(k for k in want["options"] if had.get("options", {}).get(k) != want["options"][k])
            what = f"with other options ({', '.join(changed)})" if changed else "from other sources"
            raise IngestError(f"{out} holds split {opts.split!r} ingested {what}; "
                              f"use another --out (or --split), or delete {out} to start over")
        return
    write_json_atomic(path, want)     # same content from every rank


def _report(out: Path) -> dict:
    """Totals over every split's chunk records in DIR, and per split."""
    splits: dict[str, list[dict]] = {}
    for path in sorted((out / STATE).glob("*-*.json")):
        record = json.loads(path.read_text())
        splits.setdefault(path.name.rsplit("-", 1)[0], []).append(record)
    per_split = {}
    for split, records in splits.items():
        opts = json.loads((out / STATE / f"{split}.options.json").read_text())
        per_split[split] = {**Tally.total(records), "shards": [n for r in records for n in r["shards"]],
                            "chunks": opts["chunks"], "options": opts["options"]}
    total = Tally.total(list(per_split.values()))
    return {"out": os.fspath(out), **total, "shards": [n for s in per_split.values() for n in s["shards"]],
            "splits": per_split}


def ingest(sources: list[str], out: str | os.PathLike, captions: str | None = None,
           opts: IngestOptions = IngestOptions(), workers: int = 1, rank: int | None = None,
           world: int | None = None, progress: bool = True) -> dict:
    """Ingest `sources` (and/or the `captions` manifest) into DIR `out`; returns this rank's summary
    (with the whole report under "report" when this rank wrote it)."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    if workers < 1:
        raise IngestError(f"--workers {workers} must be >= 1")
    if not sources and not captions:
        raise IngestError("give at least one SRC (file or directory) or --captions MANIFEST")
    items = list_items(sources, captions)
    chunks = make_chunks(items, opts.samples_per_shard)
    out = Path(out)
    (out / STATE).mkdir(parents=True, exist_ok=True)
    _check_options(out, opts, sources_digest(items), len(chunks))
    mine = list(range(len(chunks)))[rank::world]
    todo = [c for c in mine if not _finished(out, opts.split, c)]
    log.info("rank %d/%d: %d sources in %d chunks, %d mine, %d already done", rank, world, len(items),
             len(chunks), len(mine), len(mine) - len(todo))
    started = time.perf_counter()
    tasks = [(c, chunks[c], opts, os.fspath(out)) for c in todo]
    bar = tqdm(total=sum(len(chunks[c]) for c in todo), desc=f"ingest[{rank}]", unit="file",
               disable=not progress, dynamic_ncols=True)
    records = []
    with bar:
        if workers == 1 or len(tasks) <= 1:
            results = map(run_chunk, tasks)
            pool = None
        else:
            pool = mp.get_context("spawn").Pool(min(workers, len(tasks)))
            results = pool.imap_unordered(run_chunk, tasks)
        try:
            for record in results:
                records.append(record)
                bar.update(record["items"])
                bar.set_postfix(clips=sum(r["clips"] for r in records), refresh=False)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    elapsed = time.perf_counter() - started
    mine_total = Tally.total(records)
    summary = {"rank": rank, "world": world, "chunks": len(mine), "done_before": len(mine) - len(todo),
               "written": len(records), **{k: mine_total[k] for k in ("files", "clips", "frames", "seconds")},
               "elapsed_s": round(elapsed, 2), "report": None}
    if all(_finished(out, opts.split, c) for c in range(len(chunks))):
        report = {**_report(out), "elapsed_s": round(elapsed, 2)}
        write_json_atomic(out / REPORT, report)
        summary["report"] = report
    return summary


def format_summary(summary: dict) -> str:
    if summary["report"] is not None:
        return summary_text(summary["report"])
    return (f"rank {summary['rank']}/{summary['world']}: {summary['written']} chunks written "
            f"({summary['clips']} clips, {summary['seconds']:.1f} s of video) in {summary['elapsed_s']:.1f} s; "
            f"{REPORT} is written by the last rank to finish")
