"""Re-render an experiment's figure from existing run records, without training.

    python scripts/render_figure.py multirun/fig1_cpu [--figure-dir figures] [--title "…, 3 seeds"]
"""
import argparse

from warmup.plots import render_experiment

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("sweep_dir", help="a directory holding run records (e.g. multirun/fig1)")
parser.add_argument("--figure-dir", default=None, help="where <exp.name>.png is written (default: sweep_dir)")
parser.add_argument("--title", default=None, help="the figure's title instead of the one its runs recorded")
args = parser.parse_args()
render_experiment(args.sweep_dir, args.figure_dir or args.sweep_dir, title=args.title)
