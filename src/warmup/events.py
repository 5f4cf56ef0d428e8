"""Live views of a run's metrics: TensorBoard event files (on by default) and Weights & Biases (`logger=wandb`).

TensorBoard: each run writes its events beside its records, so `tensorboard --logdir <sweep dir>` overlays every
cell of a sweep under the cell's directory name (TensorBoard names a run by its folder). Written with tensorboardX
(no TensorFlow); `train.tensorboard=false` turns it off.

Weights & Biases: offline by default (no network or account needed), the files in `<run dir>/wandb/`; `wandb sync`
uploads them later. Runs are named by their directory and grouped by its parent (the sweep).

Both get one value per metric at the steps it was measured (λᴴ every k steps, test metrics every
`train.eval_every`), under the same tags; NaN entries — not measured — are left out.
"""
import math
import pathlib

# metrics.csv column -> tag (the slash groups the charts: loss, accuracy, sharpness)
TAGS = {
    "train_loss": "loss/train", "test_loss": "loss/test", "train_acc": "accuracy/train", "test_acc": "accuracy/test",
    "lr": "lr", "grad_norm": "grad_norm",
    "sharpness": "sharpness/hessian", "sharpness_threshold": "sharpness/hessian_threshold",
    "pre_sharpness": "sharpness/preconditioned", "pre_sharpness_threshold": "sharpness/preconditioned_threshold",
}


def points(rows: dict):
    """`(step, {tag: value})` for each row of `rows` (`{column: array}` with a `step` column), measured values only."""
    for i, step in enumerate(rows["step"]):
        values = {tag: float(rows[column][i]) for column, tag in TAGS.items()
                  if column in rows and rows[column][i] is not None and math.isfinite(float(rows[column][i]))}
        yield int(step), values


class EventWriter:
    """Appends metric rows to the run directory's TensorBoard event file."""

    def __init__(self, run_dir):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(pathlib.Path(run_dir)), flush_secs=30)

    def write(self, rows: dict) -> None:
        for step, values in points(rows):
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbWriter:
    """Logs metric rows to a Weights & Biases run (`logger`: the logger config's project, entity, mode, group)."""

    def __init__(self, run_dir, config: dict, logger: dict):
        try:
            import wandb
        except ImportError as err:
            raise ImportError("logger=wandb needs the wandb package: pip install -e .[wandb]") from err
        run_dir = pathlib.Path(run_dir)
        self.run = wandb.init(project=logger["project"], entity=logger["entity"], mode=logger["mode"],
                              group=logger["group"] or run_dir.resolve().parent.name, name=run_dir.name,
                              dir=str(run_dir), config=config, reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off"))

    def write(self, rows: dict) -> None:
        for step, values in points(rows):
            if values:
                self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def writers(run_dir, spec) -> list:
    """The live views a run's `spec` (`build.RunSpec`) asks for."""
    out = [EventWriter(run_dir)] if spec.tensorboard else []
    if spec.logger["name"] == "wandb":
        out.append(WandbWriter(run_dir, spec.config, spec.logger))
    return out
