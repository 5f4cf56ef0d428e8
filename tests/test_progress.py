import contextlib
import json
import pathlib

from warmup import config, progress


@contextlib.contextmanager
def multirun_config(sweep_dir, plain, sweeps):
    """A multirun's master config as Hydra composes it from `plain + sweeps` (the sweeps left out of the composition
    and added to its task overrides), inside Hydra's global state as a launch has it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(config.CONFIG_DIR), version_base="1.3"):
        master = compose(config_name="train", overrides=[*plain, f"hydra.sweep.dir={sweep_dir}"],
                         return_hydra_config=True)
        with open_dict(master):
            master.hydra.overrides.task = [*master.hydra.overrides.task, *sweeps]  # hydra.* overrides are not the task's
        yield master


def launch_dirs(sweep_dir, plain, sweeps):
    """`progress.cell_dirs` of that multirun, relative to its sweep directory."""
    with multirun_config(sweep_dir, plain, sweeps) as master:
        dirs = progress.cell_dirs(master)
    return None if dirs is None else [d.relative_to(sweep_dir).as_posix() for d in dirs]


def test_a_launch_counts_its_own_cells_named_as_hydra_names_them(tmp_path):
    # the default directory: Hydra's override_dirname (the launcher's key excluded, config.CELL_NAME_EXCLUDES)
    assert launch_dirs(tmp_path, ["seed=0", "launcher=sequential"], ["schedule.lr_trgt_scale=1,2"]) == [
        "schedule.lr_trgt_scale=1,seed=0", "schedule.lr_trgt_scale=2,seed=0"]
    # an experiment's template and grid: the command line replaces the grid's η values; a group sweep is composed
    template = "hydra.sweep.subdir=${param.name}_${loss.name}/c${schedule.lr_trgt_scale}_T${schedule.warmup_steps}_s${seed}"
    dirs = launch_dirs(tmp_path, ["+exp=fig3_wrn_cpu", template], ["seed=1,2", "schedule.lr_trgt_scale=64,256"])
    assert len(dirs) == 2 * 3 * 2 * 2  # param (grid) × T_wrm (grid) × c × seed
    assert {"sp_xent/c64_T1_s1", "mup_xent/c256_T256_s2"} <= set(dirs) and len(set(dirs)) == len(dirs)
    assert launch_dirs(tmp_path, [], ["schedule.lr_trgt=interval(0.1,1)"]) is None  # only Hydra expands it


def test_cell_dirs_match_a_full_composition_of_every_job(tmp_path):
    """cell_dirs composes once per group choice and sets swept keys: the directories must be those of each job's
    whole sweep config, as the launchers load it."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    template = "hydra.sweep.subdir=${param.name}/m${optimizer.momentum}_c${schedule.lr_trgt_scale}_s${seed}"
    with multirun_config(tmp_path, [template], ["param=sp,mup", "optimizer.momentum=0,0.9", "seed=1,2",
                                                "schedule.lr_trgt_scale=0.5"]) as master:
        dirs = progress.cell_dirs(master)
        jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(master.hydra.overrides.task), None)
        loader = GlobalHydra.instance().config_loader()
        full = [loader.load_sweep_config(master, job) for job in jobs[0]]
    assert dirs == [pathlib.Path(c.hydra.sweep.dir) / c.hydra.sweep.subdir for c in full]
    assert len(set(dirs)) == 8 and tmp_path / "mup/m0.9_c0.5_s2" in dirs


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

    (tmp_path / "other_launch").mkdir()  # a record of another launch into the same sweep directory: not counted
    (tmp_path / "other_launch" / "summary.json").write_text(json.dumps({"status": "converged"}))
    callback = progress.SweepProgress(every_s=0.05)
    with multirun_config(tmp_path, [], ["seed=0,1"]) as master:
        callback.on_multirun_start(master)
    assert pickle.loads(pickle.dumps(callback)).every_s == 0.05  # submitit pickles the launcher and its callbacks
    callback.on_multirun_end(None)
    assert "sweep: 0/2 cells done" in (tmp_path / "progress.log").read_text()
