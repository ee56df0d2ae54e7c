"""Files that appear whole or not at all: written under NAME.tmp, then renamed to NAME.

Tars carry no time, owner or mode of this machine, so their bytes depend on the content only (an
interrupted and resumed run writes the same bytes as an uninterrupted one). No torch here: ingest
workers import this.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


class AtomicTar:
    """A tar streamed to PATH.tmp member by member, renamed to PATH by close(); abandon() drops it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.tmp.replace(self.path)

    def abandon(self) -> None:
        self._tar.close()
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def write_shard_atomic(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """A tar of (name, bytes) members; under its final name it is always complete."""
    tar = AtomicTar(path)
    try:
        for name, data in members:
            tar.add(name, data)
    except BaseException:
        tar.abandon()
        raise
    tar.close()
