#!/usr/bin/env bash
# Set up a fresh machine: the embedded default data (Debian's dataset-fashion-mnist, where apt exists) and a
# virtual environment .venv with warmup installed (editable) plus the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  if $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
    echo "setup: installed Fashion-MNIST to /usr/share/datasets/fashion-mnist"
  else
    echo "setup: could not apt-get install dataset-fashion-mnist; put the IDX files under \$WARMUP_DATA_DIR" >&2
  fi
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: ready (.venv/bin/python -m warmup.train --help)"
