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

An experiment may be run by more than one protocol (``hgkit reproduce NAME --protocol P``): hgkit's own, the
default, and for hyper-cleaning and lr-schedules also ``reference``, the authors' code's
(:mod:`.hyper_cleaning_reference`, :mod:`.lr_schedules_reference`), and for lr-schedules ``factors``, the way from
one protocol to the other one factor at a time (:mod:`.lr_schedules_factors`); each protocol is its own module with
its own ``NAME``, so their reports sit side by side.

Modules are imported on demand, so listing them costs nothing.

Example:
    >>> list(EXPERIMENTS)
    ['hyper-cleaning', 'real-time', 'task-interactions', 'cost', 'lr-schedules', 'few-shot']
    >>> load("cost").NAME
    'cost'
    >>> load("hyper-cleaning", "reference").NAME
    'hyper-cleaning-reference'
    >>> load("cost", "reference")
    Traceback (most recent call last):
    ...
    ValueError: unknown protocol 'reference' for cost; its protocols are: hgkit
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
    "few-shot": "hgkit.experiments.few_shot",
}

DEFAULT_PROTOCOL = "hgkit"
PROTOCOLS = {
    "hyper-cleaning": {"reference": "hgkit.experiments.hyper_cleaning_reference"},
    "lr-schedules": {
        "reference": "hgkit.experiments.lr_schedules_reference",
        "factors": "hgkit.experiments.lr_schedules_factors",
    },
}
"""The protocols other than the default one (which is :data:`EXPERIMENTS`' module), per experiment."""


def protocols(name: str) -> dict[str, str]:
    """The protocols of the experiment ``name``, the default first: ``{protocol: module}``."""
    return {DEFAULT_PROTOCOL: EXPERIMENTS[name], **PROTOCOLS.get(name, {})}


def load(name: str, protocol: str | None = None) -> ModuleType:
    """The module of the experiment ``name`` (see :data:`EXPERIMENTS`) run by ``protocol`` (default: hgkit's)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; the experiments are: {', '.join(EXPERIMENTS)}")
    choices = protocols(name)
    protocol = DEFAULT_PROTOCOL if protocol is None else protocol
    if protocol not in choices:
        raise ValueError(f"unknown protocol {protocol!r} for {name}; its protocols are: {', '.join(choices)}")
    return importlib.import_module(choices[protocol])
