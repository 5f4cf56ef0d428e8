"""`launcher=batched` (hydra/launcher=batched): a multirun's cells trained by `warmup.sweep.run_grid`, i.e. as few
compiled, vmapped programs as their configs allow, each cell still writing its own run record."""
import logging
import pathlib
from dataclasses import dataclass
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.warmup_batched_launcher.batched_launcher.BatchedLauncher"
    max_cells: Optional[int] = None  # cells per compiled program (null = a whole batchable group)
    cell_axis: str = "auto"  # vmap (cells stepped together) | map (in turn) | auto (map for conv nets on CPU)


ConfigStore.instance().store(group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="warmup")


class BatchedLauncher(Launcher):
    def __init__(self, max_cells: Optional[int] = None, cell_axis: str = "auto") -> None:
        self.max_cells, self.cell_axis = max_cells, cell_axis
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from warmup import config, sweep, train  # the task's own modules: imported when a sweep is launched, not at discovery

        setup_globals()
        train.quiet_jax_logs()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        log.info(f"Launching {len(job_overrides)} jobs batched")
        full, tasks, run_dirs = [], [], []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = cfg.hydra.job.num = idx
            task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
            full.append(cfg)
            tasks.append(task)
            run_dirs.append(pathlib.Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir))
        try:
            results = sweep.run_grid(tasks, run_dirs, self.max_cells, self.cell_axis)
        except config.ConfigError as err:
            train.fail(str(err))
        returns = []
        for overrides, cfg, task, run_dir, result in zip(job_overrides, full, tasks, run_dirs, results):
            failed = isinstance(result, Exception)
            ret = JobReturn(overrides=list(overrides), cfg=task, hydra_cfg=cfg, working_dir=str(run_dir),
                            task_name=cfg.hydra.job.name,
                            status=JobStatus.FAILED if failed else JobStatus.COMPLETED)
            ret.return_value = result
            returns.append(ret)
        return returns
