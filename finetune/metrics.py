"""A run's metrics as they come: `metrics.jsonl` (a record a step) and TensorBoard event files, both in the
run directory, so `tensorboard --logdir` on a sweep's directory overlays its organisms (a run each).

Written by process 0 only, and flushed at every record so a live TensorBoard shows each step as it ends.
The writer is tensorboardX: pure Python over protobuf, no TensorFlow or torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from adl_jax import io

# metrics.jsonl field -> TensorBoard tag
TAGS = {
    "loss": "train/loss",
    "grad_norm": "train/grad_norm",
    "lr": "train/learning_rate",
    "tokens_per_s": "train/tokens_per_s",
    "eval_loss_ft": "eval/loss_finetuning_data",
    "eval_loss_pt": "eval/loss_pretraining_data",
}


class MetricLog:
    """The per-step log of a run, continued at `step` (0 for a new run): records and events past it, logged
    by a run killed after its last checkpoint, are dropped, as the resumed run logs those steps again."""

    def __init__(self, run_dir: str | Path, step: int):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            if self.path.exists():
                keep = [
                    line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step
                ]
                io.write_text(self.path, "".join(line + "\n" for line in keep))
            # purge_step: TensorBoard hides the earlier event files' points at steps >= `step`
            self.writer = SummaryWriter(str(run_dir), purge_step=step, filename_suffix=".train")

    def write(self, record: dict) -> None:
        """Append a record {"step", field: value, ...}; the fields of `TAGS` also go to TensorBoard."""
        if self.writer is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for field, tag in TAGS.items():
            if field in record:
                self.writer.add_scalar(tag, record[field], record["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_scalars(run_dir: str | Path, what: str, points: dict[int, dict[str, float]]) -> None:
    """Scalars measured once (the belief score, the trace's strength), step -> {tag: value}, into the run's
    TensorBoard events: a file of their own, `what` naming it (event files are named by the second they
    start in, so two written within one second would otherwise be one file, the second overwriting it)."""
    if jax.process_index() != 0:
        return
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(run_dir), filename_suffix=f".{what}") as writer:
        for step in sorted(points):  # TensorBoard drops a tag's points at or past a step it sees again
            for tag, value in points[step].items():
                writer.add_scalar(tag, value, step)
