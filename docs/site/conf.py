"""Sphinx configuration of hgkit's documentation site.

Build it with ``bash docs/build.sh`` (into ``docs/_build/html``), which is
``python -m sphinx -W --keep-going -b html docs/site docs/_build/html``: every warning is an error, so a broken
cross-reference, a public name missing from the API reference or a page left out of the navigation fails the
build. ``tests/test_docs.py`` builds it that way and opens it in headless Chromium.

Stack: Sphinx with the furo theme, MyST Markdown for the written pages, MyST-NB for the notebooks, autodoc +
autosummary + napoleon (the docstrings are Google style: Args / Returns / Example) for the API reference, which
``_ext/hgkit_docs.py`` generates from the modules' ``__all__``.

**The notebooks are shown with their outputs, not executed here**: the pages are ``docs/site/notebooks/*.ipynb``,
copies of ``notebooks/*.ipynb`` with the outputs of a run at their default size, written by
``bash docs/refresh_notebooks.sh`` (which re-runs only those whose code changed); ``nb_execution_mode = "off"``.
``tests/test_docs.py`` checks that each copy's cells are its notebook's, so a copy cannot drift silently, and the
test suite, which already runs every notebook (``tests/test_notebooks.py``), does not run them again here.

**Maths without network**: ``sphinx-mathjax-offline`` puts MathJax 3 in the site's ``_static/mathjax`` and points
``sphinx.ext.mathjax`` at it (by default MathJax comes from a CDN, so pages opened offline showed raw TeX).
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
    "sphinx-mathjax-offline",  # MathJax from the site itself (_static/mathjax), not from a CDN
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
nb_execution_mode = "off"  # docs/site/notebooks/ holds them executed (docs/refresh_notebooks.sh)
nb_merge_streams = True

# --- HTML -----------------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"hgkit {release}"
html_static_path = ["_static"]
html_css_files = ["hgkit.css"]  # long code lines wrap; wide outputs scroll; the notebooks' static widgets
html_theme_options = {
    "source_repository": "",
    "navigation_with_keys": True,
}
html_show_sourcelink = False
