"""The command line: ``hgkit reproduce NAME`` runs one of the paper's experiments and writes its report.

This module owns the arguments and how they choose an experiment's protocol (``--protocol``) and change its config
(``--smoke``, ``--full``, ``--seeds``, ``--set FIELD=VALUE``), and the exit status; running and reporting are the
experiment module's ``run`` and ``write_report`` (see :mod:`hgkit.experiments`).

Nothing computed is lost to a failure: a method that raises on one seed is recorded (``Results.failures``) while
the other methods and seeds go on, the report is written with the rows there are and a section "Failures", and
then the command prints one line per failure (seed, method, error, message) and exits with status 1
(``--traceback`` adds the tracebacks). An error outside the methods (loading the data, writing the report) is
printed the same way, also with status 1.

Examples::

    hgkit reproduce --list
    hgkit reproduce hyper-cleaning                   # the default size: minutes on 2 CPU cores
    hgkit reproduce hyper-cleaning --smoke           # seconds: what the tests run
    hgkit reproduce hyper-cleaning --full --seeds 5 --out results/hyper-cleaning
    hgkit reproduce hyper-cleaning --seeds 5 --set budgets=1000,2500 --set T=500
    hgkit reproduce hyper-cleaning --protocol reference   # as the authors' code runs it (RFHO)
    hgkit reproduce lr-schedules --protocol reference     # MARTHE's MNIST comparison (Marthe-TF)
    hgkit reproduce lr-schedules --protocol factors       # from that protocol to hgkit's, one factor at a time
    hgkit reproduce few-shot --out results/few-shot       # Omniglot meta-learning: ~10 minutes on 2 CPU cores

From Python:

    >>> main(["reproduce", "--list"])  # doctest: +ELLIPSIS
    experiments (hgkit reproduce NAME):
      hyper-cleaning       Data hyper-cleaning on MNIST (Franceschi et al. 2017, §5.1)
      real-time            ...
    0
    >>> from hgkit.experiments import hyper_cleaning
    >>> _override(hyper_cleaning.SMOKE, "budgets=100,200").budgets  # parsed as the field's type
    (100.0, 200.0)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
from pathlib import Path

from . import experiments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hgkit", description="hgkit: exact hypergradients of training runs")
    commands = parser.add_subparsers(dest="command", required=True)
    rep = commands.add_parser("reproduce", help="run one of the paper's experiments and write its report")
    rep.add_argument("experiment", nargs="?", help="the experiment's name (see --list)")
    rep.add_argument("--list", action="store_true", help="list the experiments and exit")
    size = rep.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny settings (seconds): checks that it runs")
    size.add_argument("--full", action="store_true", help="the settings of the published figures (long)")
    rep.add_argument(
        "--protocol",
        metavar="NAME",
        help="whose protocol runs the experiment: hgkit (the default) or, for hyper-cleaning and lr-schedules, "
        "reference (the authors' code's: RFHO, Marthe-TF), and for lr-schedules factors (from one to the other, one "
        "factor at a time); its report is written under its own name beside the default's",
    )
    rep.add_argument("--seeds", type=int, metavar="N", help="repeat over seeds 0..N-1 (overrides the config)")
    rep.add_argument(
        "--out", type=Path, metavar="DIR", help="where to write the table and figures (default: results/NAME)"
    )
    rep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of the config, e.g. --set T=500 --set budgets=1000,2500 (repeatable)",
    )
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep.add_argument("--traceback", action="store_true", help="print the traceback of each failure")
    return parser


def _override(config, assignment: str):
    """``config`` with one field replaced from ``FIELD=VALUE`` (the value parsed as the field's current type;
    ``none`` for None)."""
    name, sep, text = assignment.partition("=")
    fields = {f.name for f in dataclasses.fields(config)}
    if not sep or name not in fields:
        raise ValueError(f"--set expects FIELD=VALUE with FIELD one of {sorted(fields)}; got {assignment!r}")
    current = getattr(config, name)

    def parse(kind, raw):
        if raw.lower() == "none":  # an optional setting turned off (e.g. --set restart_above=none)
            return None
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--set {name}: expected true or false, got {raw!r}")
            return raw.lower() in ("true", "1")
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"--set {name}: expected a {kind.__name__}, got {raw!r}") from None

    if isinstance(current, tuple):
        kind = type(current[0]) if current else str
        value = tuple(parse(kind, part) for part in text.split(",") if part)
    else:
        value = parse(type(current), text)
    return dataclasses.replace(config, **{name: value})  # the Config validates the new value


def _list() -> None:
    print("experiments (hgkit reproduce NAME):")
    for name in experiments.EXPERIMENTS:
        module = experiments.load(name)
        print(f"  {name:20s} {module.TITLE}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        _list()
        return 0
    if not args.experiment:
        _parser().error(f"name an experiment ({', '.join(experiments.EXPERIMENTS)}) or use --list")
    try:
        module = experiments.load(args.experiment, args.protocol)
    except ValueError as e:
        _parser().error(str(e))
    config = module.SMOKE if args.smoke else module.FULL if args.full else module.DEFAULT
    if args.seeds is not None:
        if args.seeds < 1:
            _parser().error(f"--seeds must be at least 1; got {args.seeds}")
        if not any(f.name == "seeds" for f in dataclasses.fields(config)):
            _parser().error(f"{args.experiment} has no seeds to repeat over")
        config = dataclasses.replace(config, seeds=tuple(range(args.seeds)))
    for assignment in args.set:
        try:
            config = _override(config, assignment)
        except ValueError as e:
            _parser().error(str(e))
    out = args.out or Path("results") / args.experiment
    print(f"{module.TITLE}\n{config}\n", flush=True)
    start = time.perf_counter()
    try:
        results = module.run(config, progress=not args.no_progress)
    except Exception as error:
        return _failed(args, [], error, "before any result")
    failures = list(results.failures)
    try:
        paths = module.write_report(results, out)
        print(results.summary())
    except Exception as error:
        return _failed(args, failures, error, "while writing the report")
    print(f"\n{time.perf_counter() - start:.0f} s; wrote " + ", ".join(str(p) for p in paths))
    return _failed(args, failures) if failures else 0


def _failed(args, failures: list, error: Exception | None = None, when: str = "") -> int:
    """Say on stderr what failed, one line each (with ``--traceback``, each line after its traceback); status 1."""
    print(f"\nhgkit reproduce {args.experiment}: {len(failures) + (error is not None)} failed", file=sys.stderr)
    for failure in failures:
        if args.traceback:
            print(failure.traceback, file=sys.stderr)
        print(f"  {failure.line()}", file=sys.stderr)
    if error is not None:
        if args.traceback:
            traceback.print_exception(error, file=sys.stderr)
        print(f"  {when}: {type(error).__name__}: {' '.join(str(error).split())}", file=sys.stderr)
    if not args.traceback:
        print("(--traceback shows where)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
