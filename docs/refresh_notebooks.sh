#!/usr/bin/env bash
# Refresh the site's executed notebooks (docs/site/notebooks/*.ipynb): each notebook of notebooks/ with the outputs
# of a run at its default size. A notebook whose code is unchanged only gets its text brought over (seconds); one
# whose code changed is run again (all eight take minutes: the README's Documentation section). --all runs every
# one, NAME ... runs those, --smoke runs at HGKIT_SMOKE=1 (to try it; the tests refuse such copies).
# Needs the docs and models extras (or test). See docs/refresh_notebooks.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$python" docs/refresh_notebooks.py "$@"
