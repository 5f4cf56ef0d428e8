"""Re-render an experiment's figure from existing run records, without training.

    python scripts/render_figure.py multirun/fig1_cpu [--figure-dir figures] [--title "…, 3 seeds"]
    python scripts/render_figure.py multirun/pooled --set name=fig3_pooled --set cols_by=param   (records of several
        experiments in one directory: the first record's figure description, with these fields changed)
"""
import argparse

from omegaconf import OmegaConf

from warmup.plots import render_experiment

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a directory holding run records (e.g. multirun/fig1)")
    parser.add_argument("--figure-dir", default=None, help="where <exp.name>.png is written (default: sweep_dir)")
    parser.add_argument("--title", default=None, help="the figure's title instead of the one its runs recorded")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a field of the figure's description (the `exp` node its runs recorded)")
    args = parser.parse_args()
    changes = OmegaConf.to_container(OmegaConf.from_dotlist(args.set))
    if args.title is not None:
        changes["title"] = args.title
    render_experiment(args.sweep_dir, args.figure_dir or args.sweep_dir, changes=changes)


if __name__ == "__main__":
    main()
