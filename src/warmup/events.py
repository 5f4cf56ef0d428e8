"""TensorBoard event files: each run writes its metrics beside its records, so `tensorboard --logdir <sweep dir>`
overlays every cell of a sweep under the cell's directory name (TensorBoard names a run by its folder).

Written with tensorboardX (no TensorFlow); one scalar per metric at the steps it was measured (λᴴ every k steps,
test metrics every `train.eval_every`): NaN entries — not measured — are left out. `train.tensorboard=false`
turns it off.
"""
import math
import pathlib

# metrics.csv column -> TensorBoard tag (the slash groups the charts: loss, accuracy, sharpness)
TAGS = {
    "train_loss": "loss/train", "test_loss": "loss/test", "train_acc": "accuracy/train", "test_acc": "accuracy/test",
    "lr": "lr", "grad_norm": "grad_norm",
    "sharpness": "sharpness/hessian", "sharpness_threshold": "sharpness/hessian_threshold",
    "pre_sharpness": "sharpness/preconditioned", "pre_sharpness_threshold": "sharpness/preconditioned_threshold",
}


class EventWriter:
    """Appends metric rows (`{column: array}` with a `step` column) to the run directory's event file."""

    def __init__(self, run_dir):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(pathlib.Path(run_dir)), flush_secs=30)

    def write(self, rows: dict) -> None:
        steps = [int(s) for s in rows["step"]]
        for column, tag in TAGS.items():
            for step, value in zip(steps, rows.get(column, ())):
                if value is not None and math.isfinite(float(value)):
                    self.writer.add_scalar(tag, float(value), step)

    def close(self) -> None:
        self.writer.close()
