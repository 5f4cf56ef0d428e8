import json
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from warmup import events, records


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


def read_wandb_history(run_dir) -> list[dict[str, float]]:
    """The logged rows of the run's offline W&B file: a LevelDB-style log (7-byte file header, 32 KiB blocks of
    records with a 7-byte header: CRC, length, kind) of `Record` protos."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, block, pending, rows = path.read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): float(item.value_json)
                             for item in record.history.item})
    return rows


def test_logger_wandb_logs_every_measured_metric_offline(run):
    """logger=wandb (offline: no network) logs the metrics.csv values under the TensorBoard tags, by step."""
    run_dir, _ = run("schedule.lr_trgt_scale=1", "sharpness.every=5", "logger=wandb", "train.tensorboard=false")
    metrics = records.read_metrics(run_dir)
    history = read_wandb_history(run_dir)
    logged = {}
    for row in history:
        logged.setdefault(int(row["_step"]), {}).update(row)
    assert sorted(logged) == sorted(set(metrics.step))
    for column, tag in events.TAGS.items():
        measured = metrics[metrics[column].notna()] if column in metrics else metrics.iloc[:0]
        assert sorted(s for s, row in logged.items() if tag in row) == sorted(set(measured.step)), tag
        last = measured.drop_duplicates("step", keep="last")
        np.testing.assert_allclose([logged[s][tag] for s in last.step], last[column], rtol=1e-6, err_msg=tag)
    assert not list(run_dir.glob("events.out.tfevents.*"))
    records.start(run_dir, {"seed": 0}, {"status": "running"})  # a redone run starts a fresh W&B run
    assert not (run_dir / "wandb").exists()


def _serve_tensorboard(logdir, run_name: str, tag: str):
    """A TensorBoard server on a free local port, returned once its data API lists `tag` for `run_name`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                               "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/data/plugin/scalars/tags", timeout=5) as answer:
                if tag in json.load(answer).get(run_name, {}):
                    return server, url
        except OSError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            pytest.fail(f"TensorBoard did not serve {run_name}'s {tag}")
        time.sleep(0.5)


@pytest.mark.slow
def test_tensorboard_shows_a_runs_sharpness_chart_in_headless_chromium(run, tmp_path):
    """A person's view: TensorBoard's Scalars page filtered to one tag, screenshot by headless Chromium. Filtered to
    λᴴ, the page's first chart must hold the run's plotted line (saturated pixels; axes and labels are grey), and a
    different one from the page filtered to its threshold 2/η_t in the same place (a filter that matched nothing
    would show the same other charts there)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    pytest.importorskip("tensorboard", reason="TensorBoard is not installed (pip install tensorboard)")
    import matplotlib.image

    run_dir, _ = run("schedule.lr_trgt_scale=1", "schedule.warmup_steps=5", "sharpness.every=2")
    server, url = _serve_tensorboard(run_dir.parent, run_dir.name, "sharpness/hessian")
    lines = {}
    try:
        for tag in ("sharpness/hessian", "sharpness/hessian_threshold"):
            shot = tmp_path / f"{tag.replace('/', '_')}.png"
            page = f"{url}/#scalars&tagFilter={urllib.parse.quote(tag + '$', safe='')}"
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                            "--virtual-time-budget=30000", f"--screenshot={shot}", page],
                           check=True, timeout=180, capture_output=True)
            pixels = matplotlib.image.imread(shot)[..., :3]
            assert pixels.shape[:2] == (1000, 1400)
            chart = pixels[200:440, 380:780]  # the first chart of the page: the filter's only match
            lines[tag] = chart.max(axis=-1) - chart.min(axis=-1) > 0.3
            assert lines[tag].sum() > 200, f"no plotted line in the {tag} chart; see {shot}"
    finally:
        server.kill()
    assert (lines["sharpness/hessian"] != lines["sharpness/hessian_threshold"]).sum() > 200
