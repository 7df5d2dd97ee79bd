#!/usr/bin/env bash
# Build the documentation site into docs/_build/html (open docs/_build/html/index.html).
# Every warning is an error: a broken cross-reference, a public name or module missing from the API reference,
# or a page left out of the navigation fails the build. Needs the docs extra: pip install -e ".[docs]".
# The notebooks' pages show the outputs stored in docs/site/notebooks/ (nothing is executed here); after changing a
# notebook, bash docs/refresh_notebooks.sh. Extra arguments go to sphinx (e.g. -E to re-read every page).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$python" -m sphinx -W --keep-going -b html docs/site docs/_build/html "$@"
echo "docs: open docs/_build/html/index.html"
