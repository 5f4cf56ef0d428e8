import json

from warmup import progress


def test_the_total_is_the_product_of_the_command_lines_and_the_grids_value_counts():
    grid = {"param": "mup,sp", "schedule.warmup_steps": "1,64,256"}
    assert progress.cell_count(["schedule.lr_trgt_scale=1,2,4", "seed=0"], grid) == 3 * 2 * 3
    assert progress.cell_count(["schedule.warmup_steps=1,2"], grid) == 2 * 2  # the command line replaces the grid's
    assert progress.cell_count(["model.width=range(8,32,8)"], None) == 3
    assert progress.cell_count(["schedule.lr_trgt=interval(0.1,1)"], None) is None


def test_a_line_counts_statuses_and_estimates_the_rest_from_the_work_done_since_launch(tmp_path):
    for i, (status, steps) in enumerate([("converged", 100), ("diverged", 7), ("failed", 100), ("running", 50)]):
        (tmp_path / f"cell{i}").mkdir()
        (tmp_path / f"cell{i}" / "summary.json").write_text(json.dumps({"status": status, "steps_completed": steps}))
    counts = progress.tally(tmp_path, steps=100)
    assert counts["work"] == 3.5  # three finished cells and half of the running one
    assert progress.line(counts, total=8, elapsed=35.0) == (
        "sweep: 3/8 cells done (1 converged, 1 diverged, 1 failed, 0 errors), 1 running, 0:00:35 elapsed, "
        "ETA 0:00:45")  # 3.5 cells in 35 s: 4.5 to go
    assert progress.line(counts, total=8, elapsed=35.0, work_at_start=2.5).endswith("ETA 0:02:37")  # relaunched
    assert "ETA" not in progress.line(counts, total=8, elapsed=35.0, work_at_start=3.5)


def test_the_callback_pickles_for_launchers_that_ship_it_to_their_jobs(tmp_path):
    import pickle
    from omegaconf import OmegaConf

    callback = progress.SweepProgress(every_s=0.05)
    callback.on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "overrides": {
        "task": ["seed=0,1"]}, "sweeper": {"params": None}}}))
    assert pickle.loads(pickle.dumps(callback)).every_s == 0.05  # submitit pickles the launcher and its callbacks
    callback.on_multirun_end(None)
    assert "sweep: 0/2 cells done" in (tmp_path / "progress.log").read_text()
