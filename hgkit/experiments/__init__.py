"""The paper's experiments, one module each, on one scaffold; this package owns the registry of their names.

Every experiment module has:

* ``NAME`` (as typed on the command line) and ``TITLE``;
* ``Config``, a frozen dataclass checked on construction (``_config``), and three instances: ``SMOKE`` (tests:
  well under a minute on 2 cores), ``DEFAULT`` (what ``hgkit reproduce NAME`` runs: minutes) and ``FULL`` (the
  published figures);
* ``run(config, progress=True) -> Results``: the seeded experiments repeat one function per seed through the shared
  seed loop (``_report.over_seeds``) into one table with a row per seed; ``Results.summary()`` is what the
  command line prints; ``Results.failures`` the runs that raised (``_report.RunFailure``: seed, method, error,
  message, a diverged loop's partial result), recorded by ``_report.FailureLog.attempt`` around each method while
  the other methods and seeds go on (the table has only what the others gave);
* ``write_report(results, out_dir) -> list[Path]``, which writes ``NAME.md`` (the table, then notes such as the means
  over seeds, then the failures if any) and ``NAME.csv`` (the table at full precision; ``NAME-failures.csv`` lists
  the failures) with ``_report.write_tables``, and the figures as ``NAME*.png`` with ``_report.save_figure`` (from
  the rows there are), and returns the paths.

What they share lives in the private modules: ``_config`` (the configs' checks), ``_data`` (the packaged MNIST
cut to size), ``_models`` (MLP, linear model, losses, plain training by :func:`hgkit.unroll`) and ``_report`` (seed
loop, tables and figures); what a hypergradient costs in memory and time is measured by :mod:`hgkit.measure`.

Modules are imported on demand, so listing them costs nothing.

Example:
    >>> list(EXPERIMENTS)
    ['hyper-cleaning', 'real-time', 'task-interactions', 'cost', 'lr-schedules']
    >>> load("cost").NAME
    'cost'
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXPERIMENTS = {
    "hyper-cleaning": "hgkit.experiments.hyper_cleaning",
    "real-time": "hgkit.experiments.realtime_tuning",
    "task-interactions": "hgkit.experiments.task_interactions",
    "cost": "hgkit.experiments.cost",
    "lr-schedules": "hgkit.experiments.lr_schedules",
}


def load(name: str) -> ModuleType:
    """The experiment module called ``name`` (see :data:`EXPERIMENTS`)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; the experiments are: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
