import struct

import numpy as np
import pytest

from warmup import events, records

pytestmark = pytest.mark.usefixtures("compilation_cache")


def read_scalars(run_dir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the run's TensorBoard event files, read as TFRecords of `Event` protos."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4  # length, its CRC, the record, its CRC
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_every_run_writes_its_metrics_as_tensorboard_scalars_at_the_measured_steps(run):
    run_dir, _ = run("schedule.lr_trgt_scale=1", "schedule.warmup_steps=5", "sharpness.every=5")
    scalars, metrics = read_scalars(run_dir), records.read_metrics(run_dir)
    assert set(events.TAGS.values()) - {"sharpness/preconditioned", "sharpness/preconditioned_threshold"} <= \
        set(scalars)  # SGD: no preconditioned sharpness
    for column, tag in events.TAGS.items():
        measured = metrics[metrics[column].notna()] if column in metrics else metrics.iloc[:0]
        assert sorted(scalars.get(tag, {})) == list(measured.step), tag
        np.testing.assert_allclose([scalars[tag][s] for s in measured.step], measured[column], rtol=1e-6)
    assert sorted(scalars["sharpness/hessian"]) == [0, 5, 10, 15]
    assert sorted(scalars["accuracy/test"]) == [0, 10, 20]  # every eval_every, and the final row at t = T


def test_tensorboard_can_be_turned_off_and_a_redone_run_starts_a_fresh_event_file(run):
    run_dir, _ = run("schedule.lr_trgt=0.05", "train.tensorboard=false")
    assert not list(run_dir.glob("events.out.tfevents.*"))
    (run_dir / "events.out.tfevents.stale").write_bytes(b"")
    records.start(run_dir, {"seed": 0}, {"status": "running"})
    assert not list(run_dir.glob("events.out.tfevents.*"))
