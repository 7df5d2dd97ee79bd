#!/usr/bin/env bash
# Build the documentation site into docs/_build/html (open docs/_build/html/index.html).
# Every warning is an error: a broken cross-reference, a public name or module missing from the API reference,
# or a page left out of the navigation fails the build. Needs the docs extra: pip install -e ".[docs]".
# HGKIT_DOCS_EXECUTE=1 also runs the notebooks (at smoke size) into their pages; by default they are rendered as
# stored, without outputs. Extra arguments go to sphinx (e.g. -E to re-read every page).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$python" -m sphinx -W --keep-going -b html docs/site docs/_build/html "$@"
echo "docs: open docs/_build/html/index.html"
