"""The command line: `python -m warmup.train [overrides]` (or `warmup-train`): precheck → find_data → Hydra →
`run.execute`.

Everything is checked before Hydra runs anything (`precheck`: the config and every value of its sweeps; `find_data`:
the datasets they train on), so bad input is one line on stderr and exit status 2, never a traceback or a sweep that
stops half-way; the run itself is `warmup.run`.
"""
import logging
import os
import pathlib
import re
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from warmup import config, data, records, run, text
from warmup.config import CONFIG_DIR, ConfigError
from warmup.data import DataNotFoundError

# Hydra's own flags that take a value as the next argument (`-cd DIR`); `--flag=value` forms need no entry.
_FLAGS_WITH_VALUE = ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name", "-c", "--cfg", "-p",
                     "--package", "--info", "--experimental-rerun")
_NO_PRECHECK = ("-h", "--help", "--hydra-help", "--version", "-sc", "--shell-completion", "--info")


def quiet_jax_logs() -> None:
    """Hydra routes INFO logs to the console; JAX's backend probing (no TPU found, ...) is noise there."""
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _hydra_files() -> dict[str, str]:
    """Hydra's record of the launch, `.hydra/hydra.yaml` and `overrides.yaml`: hydra.output_subdir is null so that a
    refused relaunch touches nothing, and the run record writes them when training starts."""
    hc = HydraConfig.get()
    return {".hydra/hydra.yaml": OmegaConf.to_yaml({"hydra": hc}),
            ".hydra/overrides.yaml": OmegaConf.to_yaml(list(hc.overrides.task))}


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    quiet_jax_logs()
    hc = HydraConfig.get()
    run_dir = pathlib.Path(hc.runtime.output_dir)
    try:
        run.execute(cfg, run_dir, extra_files=_hydra_files())
    except (ConfigError, DataNotFoundError) as err:
        fail(str(err))
    except Exception as err:  # recorded; a multirun goes on with its other cells and reports the error at the end
        try:
            records.write_error(run_dir, err, OmegaConf.to_container(cfg, resolve=True))
        except OSError as unwritable:
            fail(str(unwritable))
        if isinstance(err, OSError) and hc.mode != RunMode.MULTIRUN:  # a bad file or folder: one line
            fail(str(err))
        raise


def _writable_dir(key: str, folder: str) -> None:
    """ConfigError unless `folder` exists as a writable directory or can be created (its nearest existing ancestor
    is a writable directory)."""
    path = pathlib.Path(folder).expanduser().absolute()
    ancestor = next(p for p in (path, *path.parents) if p.exists())
    if not (ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK)):
        raise ConfigError(f"{key}={folder}: cannot write there ({ancestor} is not a writable directory)")


def check_overrides(parsed) -> None:
    """Each override names a config group (with a known option), a known key, or an `exp.` / `hydra.` key; `+key`
    does not add keys the configs do not define."""
    for override in parsed:
        key = override.get_key_element().lstrip("+~")
        if (CONFIG_DIR / key).is_dir() or key.startswith(("hydra.", "hydra/")):
            continue
        config.check_key(key)


def _split_sweeps(parsed, plain: list, sweeps: list) -> bool:
    """Plain overrides into `plain`, enumerable sweeps into `sweeps` (and their first value into `plain`), each
    group's values checked against its options; whether all were enumerable (not a sweep only Hydra expands)."""
    from hydra.core.override_parser.types import Glob, OverrideType

    hydra_expands = False
    for override in parsed:
        key = override.get_key_element()
        if not override.is_sweep_override():
            plain.append(override.input_line)
            values = [override.get_value_element_as_str()]
        elif override.is_discrete_sweep() and not isinstance(override.value(), Glob):
            sweeps.append(override)
            values = list(override.sweep_string_iterator())
            plain.append(f"{key}={values[0]}")
        else:
            hydra_expands = True
            continue
        group = key.lstrip("+~")
        if override.type != OverrideType.DEL and (CONFIG_DIR / group).is_dir():
            options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
            for value in values:
                if value not in options:
                    raise ConfigError(f"{group}={value}: unknown option; allowed: {', '.join(options)}")
    return not hydra_expands


def _sweep_variants(compose, cfg: DictConfig, plain: list[str], sweeps: list):
    """(key, first value, value, config) for each further value of each sweep: composed (a group) or set (a key),
    the other sweeps at their first values; a set key's config is `cfg` itself, restored after its values."""
    for override in sweeps:
        key = override.get_key_element().lstrip("+~")
        first = next(override.sweep_string_iterator())
        if (CONFIG_DIR / key).is_dir():
            others = [o for o in plain if o.partition("=")[0].lstrip("+~") != key]
            for value in list(override.sweep_string_iterator())[1:]:
                yield key, first, value, compose([*others, f"{key}={value}"])
        else:
            stored = OmegaConf.select(cfg, key)
            for value, text in list(zip(override.sweep_iterator(), override.sweep_string_iterator()))[1:]:
                OmegaConf.update(cfg, key, value, force_add=True)
                yield key, first, text, cfg
            OmegaConf.update(cfg, key, stored, force_add=True)


def _cell_dir(template: str | None, cfg: DictConfig) -> str | None:
    """A cell's `hydra.sweep.subdir` from its template and task config; None when the template needs Hydra's job
    fields (the default, `override_dirname`, names every swept key) or is not a template."""
    if not isinstance(template, str) or "hydra" in template:
        return None
    return str(OmegaConf.create({"subdir": template}, parent=cfg).subdir)


def _data_source(cfg: DictConfig) -> tuple[str, str | None]:
    return cfg.data.name, cfg.data.root


def _validate_sweeps(compose, cfg: DictConfig, plain: list[str], sweeps: list,
                     subdir: str | None = None) -> set[tuple[str, str | None]]:
    """Validate the config at the sweeps' first values, then each further value of each sweep; the data sources
    (name, root) they train on. With a sweep's `subdir` template, each swept key must change the cell's directory:
    cells sharing one would share a record."""
    config.validate(cfg)
    sources = {_data_source(cfg)}
    first_dir = _cell_dir(subdir, cfg)
    for key, first, value, variant in _sweep_variants(compose, cfg, plain, sweeps):
        config.validate(variant)
        sources.add(_data_source(variant))
        if first_dir is not None and _cell_dir(subdir, variant) == first_dir:
            field = f"{key}.name" if (CONFIG_DIR / key).is_dir() else key  # a group: its option's name
            raise ConfigError(f"hydra.sweep.subdir={subdir}: the cells {key}={first} and {key}={value} share the run "
                              f"directory {first_dir}; put ${{{field}}} in hydra.sweep.subdir")
    return sources


def _task_config(full: DictConfig) -> DictConfig:
    """A config composed with Hydra's node, without it: what composing it again without would give, for a third of
    a second less per launch."""
    task = OmegaConf.masked_copy(full, [key for key in full if key != "hydra"])
    OmegaConf.set_struct(task, True)
    return task


def precheck(overrides: list[str], multirun: bool = False) -> list[tuple[str, str | None]]:
    """Compose and validate the config before Hydra runs anything, so bad input is one line, not a traceback or a
    sweep that stops half-way. Every override's key must exist; every value of a sweep — on the command line
    (`k=a,b`, `k=range(…)`, `k=choice(…)`) or in an experiment's grid (`hydra.sweeper.params`, for keys the command
    line does not set) — is checked; the run (or sweep) directory must be writable, and each swept key must change
    a cell's directory (else two cells would share one record). With an `interval(…)` or
    `glob(…)` sweep, which only Hydra expands, only the composition is checked. Returns the data sources (name,
    root) the launch trains on, for `find_data`; reads no files."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        parser = OverridesParser.create()
        parsed = parser.parse_overrides([o for o in overrides if not o.startswith(("hydra.", "hydra/"))])
        check_overrides(parsed)
        plain, sweeps = [], []
        enumerable = _split_sweeps(parsed, plain, sweeps)
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            hydra_overrides = [o for o in overrides if o.startswith("hydra.")]
            full = compose(config_name="train", overrides=[*plain, *hydra_overrides], return_hydra_config=True)
            given = {o.get_key_element().lstrip("+~") for o in parsed}
            grid = parser.parse_overrides([f"{k}={v}" for k, v in (full.hydra.sweeper.params or {}).items()
                                           if k not in given])
            enumerable &= _split_sweeps(grid, plain, sweeps)
            multirun = multirun or "MULTIRUN" in str(OmegaConf.select(full, "hydra.mode"))
            key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
            _writable_dir(key, OmegaConf.select(full, key))
            compose_train = lambda o: compose(config_name="train", overrides=o)
            if not enumerable:
                return [_data_source(full)]
            subdir = OmegaConf.to_container(full.hydra.sweep, resolve=False)["subdir"] if multirun else None
            cfg = compose_train(plain) if grid else _task_config(full)  # the grid's first values are not in `full`
            return sorted(_validate_sweeps(compose_train, cfg, plain, sweeps, subdir), key=str)
    except ConfigError as err:
        fail(str(err))
    except (HydraException, OmegaConfBaseException) as err:
        fail(re.sub(r"\s+", " ", str(err)).strip())


def find_data(sources: list[tuple[str, str | None]]) -> None:
    """Each dataset a launch trains on is found (or downloaded) before Hydra composes its cells: a missing one is
    one line, not a traceback once the cells of a large sweep have been composed."""
    try:
        for name, root in sources:
            text.find_corpus(name, root) if name in text.CORPORA else data.find_root(name, root)
    except DataNotFoundError as err:
        fail(str(err))


def main() -> None:
    args = sys.argv[1:]
    if not any(a in _NO_PRECHECK or a.startswith(tuple(f"{f}=" for f in _NO_PRECHECK)) for a in args):
        overrides, multirun, printing, skip_next = [], False, False, False
        for a in args:
            if skip_next:
                skip_next = False
            elif a in ("-m", "--multirun"):
                multirun = True
            elif a in _FLAGS_WITH_VALUE:
                skip_next = True
                printing |= a in ("-c", "--cfg")
            elif a.startswith("--cfg="):
                printing = True
            elif not a.startswith("-"):
                overrides.append(a)
        sources = precheck(overrides, multirun=multirun)
        if not printing:  # printing a config needs no data
            find_data(sources)
    _hydra_main()


if __name__ == "__main__":
    main()
