"""metrics.jsonl + TensorBoard (scalars, validation clips), written by rank 0 only."""
from __future__ import annotations

import json
from pathlib import Path

from sora.train.faults import StorageError


def truncate_from(path: Path, step: int) -> int:
    """Drop records of steps >= `step` (logged after the checkpoint a resume starts from, so they
    are about to be logged again); atomic rewrite. Returns how many were dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    keep = [line for line in lines if line.strip() and json.loads(line).get("step", -1) < step]
    if len(keep) == len(lines):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)
    return len(lines) - len(keep)


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool, start_step: int = 0):
        self.enabled = enabled
        self.tb = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            truncate_from(run_dir / "metrics.jsonl", start_step)
            self.path = run_dir / "metrics.jsonl"
            self.file = open(self.path, "a", buffering=1)
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tb"))
            except Exception:  # noqa: BLE001 - tensorboard is optional at run time
                self.tb = None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            self.file.write(json.dumps(record) + "\n")
        except OSError as e:
            raise StorageError(f"cannot append to '{self.path}': {e.strerror or e}") from e
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def clip(self, tag: str, gif: bytes, height: int, width: int, step: int) -> None:
        """An animated GIF as a TensorBoard image summary (what SummaryWriter.add_video writes, which
        needs moviepy to encode it; the gif here comes encoded)."""
        if self.tb is None:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
        self.tb._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()
