"""Sphinx configuration of hgkit's documentation site.

Build it with ``bash docs/build.sh`` (into ``docs/_build/html``), which is
``python -m sphinx -W --keep-going -b html docs/site docs/_build/html``: every warning is an error, so a broken
cross-reference, a public name missing from the API reference or a page left out of the navigation fails the
build. ``tests/test_docs.py`` builds it that way and opens it in headless Chromium.

Stack: Sphinx with the furo theme, MyST Markdown for the written pages, MyST-NB for the notebooks, autodoc +
autosummary + napoleon (the docstrings are Google style: Args / Returns / Example) for the API reference, which
``_ext/hgkit_docs.py`` generates from the modules' ``__all__``.

**The notebooks are rendered, not executed** (``nb_execution_mode = "off"``): they are stored without outputs, the
test suite already runs each of them in a real kernel (``tests/test_notebooks.py``) and executing them all here,
even at smoke size, would take minutes on 2 CPU cores for a build that otherwise takes well under a minute. Set
``HGKIT_DOCS_EXECUTE=1`` to execute them during the build at smoke size (``HGKIT_SMOKE=1``; outputs are cached in
the build folder's ``.jupyter_cache``); the pages say how to run them at full size.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's hgkit, whatever is installed
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")

import hgkit  # noqa: E402

project = "hgkit"
author = "the hgkit authors"
copyright = "hgkit authors, MIT licence"  # noqa: A001
release = version = hgkit.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",  # MyST Markdown pages and the notebooks (it loads myst_parser)
    "hgkit_docs",
]

# notebooks/results/: what running a notebook writes (git-ignored), never a page of the site.
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "_ext", "notebooks/results"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"

# Every reference must resolve: a broken one is a warning, and the build runs with -W.
# (References to objects outside hgkit render as code: there is no network for intersphinx. _ext/hgkit_docs.py.)
nitpicky = True

# --- API reference --------------------------------------------------------------------------------------------------
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = True
autodoc_preserve_defaults = True
autosummary_generate = False  # the tables link to entries written by hgkit-module; no stub pages
python_use_unqualified_type_names = True
add_module_names = False
toc_object_entries_show_parents = "hide"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

# --- Markdown and notebooks -----------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "attrs_inline"]
myst_heading_anchors = 3
nb_execution_mode = "off"
if os.environ.get("HGKIT_DOCS_EXECUTE") == "1":
    os.environ["HGKIT_SMOKE"] = "1"  # the kernel inherits it: each notebook sizes itself on it
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    nb_execution_mode = "cache"
    nb_execution_timeout = 600
    nb_execution_raise_on_error = True
nb_merge_streams = True

# --- HTML -----------------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"hgkit {release}"
html_static_path: list[str] = []
html_theme_options = {
    "source_repository": "",
    "navigation_with_keys": True,
}
html_show_sourcelink = False
