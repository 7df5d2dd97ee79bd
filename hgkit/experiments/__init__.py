"""The paper's experiments, one module each.

Every experiment module has:

* ``NAME`` (as typed on the command line) and ``TITLE``;
* ``Config``, a frozen dataclass, and three instances: ``SMOKE`` (tests: well under a minute on 2 cores),
  ``DEFAULT`` (what ``hgkit reproduce NAME`` runs: minutes) and ``FULL`` (the published figures);
* ``run(config, progress=True) -> results`` and ``write_report(results, out_dir) -> list[Path]``, which writes the
  results table as Markdown and CSV and the figures as PNG, and returns the paths.

Modules are imported on demand, so listing them costs nothing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXPERIMENTS = {
    "hyper-cleaning": "hgkit.experiments.hyper_cleaning",
    "real-time": "hgkit.experiments.realtime_tuning",
    "task-interactions": "hgkit.experiments.task_interactions",
    "cost": "hgkit.experiments.cost",
}


def load(name: str) -> ModuleType:
    """The experiment module called ``name`` (see :data:`EXPERIMENTS`)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; the experiments are: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
