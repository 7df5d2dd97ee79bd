"""What the experiments' reports share: the seed loop (:func:`over_seeds`) and the means over seeds
(:func:`mean_over_seeds`), what failed (:class:`FailureLog`, :class:`RunFailure`), a DataFrame as a Markdown table,
the table files (``NAME.md``, ``NAME.csv``, and ``NAME-failures.csv`` when something failed) and the figures
(``NAME*.png``).

A method that raises on one seed does not end the experiment: :meth:`FailureLog.attempt` records the exception as a
:class:`RunFailure` (seed, method, error, message, and a diverged loop's partial result) and the other methods and
seeds go on; the report lists the failures and ``hgkit reproduce`` exits with status 1 after writing it.

Example:
    >>> import pandas as pd
    >>> print(markdown_table(pd.DataFrame({"method": ["reverse"], "seconds": [0.0123456], "steps": [3000.0]})))
    | method | seconds | steps |
    |---|---|---|
    | reverse | 0.0123 | 3000 |
    >>> table, rest = over_seeds((0, 1), lambda seed: (pd.DataFrame({"seed": [seed], "error": [0.1 * seed]}), seed**2))
    >>> table["error"].tolist(), rest
    ([0.0, 0.1], {0: (0,), 1: (1,)})
    >>> failures = FailureLog()
    >>> failures.attempt(1, "inverse", lambda x: 1 / x, 0.0) is None  # recorded, not raised
    True
    >>> print(failures.records[0].line())
    seed 1, inverse: ZeroDivisionError: float division by zero
"""

from __future__ import annotations

import dataclasses
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from ..outer import HyperDivergenceError, HyperOptimizationResult

ALL_METHODS = "all methods"  # the method of a failure outside any one method (a seed's setup)


@dataclasses.dataclass(frozen=True)
class RunFailure:
    """One (seed, method) of an experiment that raised, as data.

    Attributes:
        seed: the seed (None for an experiment without seeds).
        method: the method's name as in the table (``ALL_METHODS`` when a seed failed outside its methods).
        error: the exception's type name (``"not run"`` for a method skipped because one it needs failed).
        message: the exception's message, on one line.
        iteration: for a diverged loop (:class:`hgkit.HyperDivergenceError`), the hyper-iteration that failed,
            which is also how many completed.
        partial: a loop's result up to the failure, when the error carries one (``error.result``, as a
            :class:`hgkit.HyperDivergenceError` does; its ``history`` holds the completed hyper-iterations), for
            the figures; None otherwise.
        traceback: the formatted traceback (``hgkit reproduce --traceback`` prints it).
    """

    seed: int | None
    method: str
    error: str
    message: str
    iteration: int | None = None
    partial: Any = dataclasses.field(default=None, repr=False, compare=False)
    traceback: str = dataclasses.field(default="", repr=False, compare=False)

    @classmethod
    def of(cls, seed: int | None, method: str, error: Exception) -> RunFailure:
        partial = getattr(error, "result", None)
        return cls(
            seed=seed,
            method=method,
            error=type(error).__name__,
            message=" ".join(str(error).split()) or repr(error),
            iteration=error.iteration if isinstance(error, HyperDivergenceError) else None,
            partial=partial if isinstance(partial, HyperOptimizationResult) else None,
            traceback="".join(traceback.format_exception(error)),
        )

    def line(self) -> str:
        """``seed S, METHOD: ERROR: message``: what the command line prints and the report lists."""
        seed = "" if self.seed is None else f"seed {self.seed}, "
        return f"{seed}{self.method}: {self.error}: {self.message}"


class FailureLog:
    """The failures of one experiment's run, collected as it goes (``records``, in the order they happened)."""

    def __init__(self):
        self.records: list[RunFailure] = []

    def attempt(self, seed: int | None, method: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``; if it raises, the exception is recorded as ``(seed, method)``'s failure and
        None returned instead (so ``fn`` itself must not return None)."""
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # any failure of one method is the report's data, not the end of the run
            self.records.append(RunFailure.of(seed, method, error))
            return None

    def not_run(self, seed: int | None, method: str, reason: str) -> None:
        """Record that ``method`` was skipped on ``seed`` because something it needs failed."""
        self.records.append(RunFailure(seed, method, "not run", reason))

    def partial(self, seed: int | None, method: str):
        """The loop result up to the failure that ``(seed, method)`` left (see :attr:`RunFailure.partial`), or None."""
        return next((f.partial for f in self.records if (f.seed, f.method) == (seed, method)), None)


def failed_methods(failures, seed) -> set[str]:
    """The methods that failed on ``seed`` (with ``ALL_METHODS`` if the seed failed outside them)."""
    return {f.method for f in failures if f.seed == seed}


def failures_note(failures) -> str:
    """For a summary: an empty string, or a line naming the (seed, method) runs that failed."""
    if not failures:
        return ""
    runs = "; ".join(f"{f.method} on seed {f.seed}" if f.seed is not None else f.method for f in failures)
    return f"\n\n{_failed(failures)}: {runs} (see the report's Failures)"


def _failed(failures) -> str:
    n = len(failures)
    return f"{n} {'run' if n == 1 else 'runs'} failed"


def _cell(value, digits: int) -> str:
    if isinstance(value, float | np.floating):
        if np.isfinite(value) and float(value).is_integer() and abs(value) >= 1:
            return f"{int(value)}"  # counts averaged over seeds stay counts (3000, not 3e+03)
        return "nan" if np.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def markdown_table(frame, digits: int = 3) -> str:
    """A DataFrame as a GitHub Markdown table, floats to ``digits`` significant digits (no index)."""
    if not len(frame.columns):
        return "(no rows)"
    lines = ["| " + " | ".join(str(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines)


def write_tables(frame, out_dir: Path, stem: str, title: str, notes: str = "", failures=()) -> list[Path]:
    """``stem.md`` (a title, the table, then ``notes``) and ``stem.csv`` (full precision) in ``out_dir``.

    With ``failures`` (:class:`RunFailure`), the Markdown says under its title that rows are missing and ends with a
    section "Failures" (one line each: seed, method, error, message), and ``stem-failures.csv`` lists them; without,
    a ``stem-failures.csv`` left by an earlier run is removed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv, failed = out_dir / f"{stem}.md", out_dir / f"{stem}.csv", out_dir / f"{stem}-failures.csv"
    text = f"# {title}\n\n"
    if failures:
        text += f"**Incomplete: {_failed(failures)} (listed under Failures at the end); the tables hold what the "
        text += "others gave.**\n\n"
    text += f"{markdown_table(frame)}\n" + (f"\n{notes}\n" if notes else "")
    if failures:
        text += "\n## Failures\n\n" + "\n".join(f"- {f.line()}" for f in failures) + "\n"
    md.write_text(text)
    frame.to_csv(csv, index=False)
    if not failures:
        failed.unlink(missing_ok=True)
        return [md, csv]
    import pandas as pd

    columns = ["seed", "method", "error", "iteration", "message"]
    pd.DataFrame([{c: getattr(f, c) for c in columns} for f in failures], columns=columns).to_csv(failed, index=False)
    return [md, csv, failed]


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG and close it (reports draw many; pyplot would keep them all)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def mark_missing(ax, text: str):
    """Say on an empty panel what is missing from it (a method that failed); returns the text artist."""
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="tab:red")


def mean_over_seeds(table, columns, spread=()):
    """Per method (in order of first appearance) the mean of ``columns`` over the seeds' rows, and the standard
    deviation of ``spread`` as ``<name>_std`` when there are several seeds (no rows: an empty table)."""
    import pandas as pd

    if table.empty:
        return pd.DataFrame(columns=["method", *columns])
    grouped = table.groupby("method", sort=False)
    out = grouped[list(columns)].mean()
    if spread and table["seed"].nunique() > 1:
        out = out.join(grouped[list(spread)].std(), rsuffix="_std")
    return out.reset_index()


def t_interval(values) -> tuple[float, float]:
    """The mean of ``values`` and the half-width of its 95 % Student-t interval (nan with fewer than two)."""
    from scipy.stats import t

    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return (float(values.mean()) if len(values) else float("nan")), float("nan")
    return float(values.mean()), float(t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


def paired_differences(table, by: str, pairs, value: str = "test_accuracy", scale: float = 100.0):
    """Per group of ``by`` (in order of first appearance): for each pair ``(a, b)`` of ``table["method"]`` values,
    the mean over seeds of ``scale · (value_a − value_b)`` and its 95 % half-width (:func:`t_interval`); the seeds
    pair the rows (the same data and initial weights for every method)."""
    import pandas as pd

    rows = []
    for group, part in table.groupby(by, sort=False):
        wide = part.pivot(index="seed", columns="method", values=value)
        row = {by: group}
        for a, b in pairs:
            d = scale * (wide[a] - wide[b]) if {a, b} <= set(wide) else pd.Series(dtype=float)
            row[f"{a} − {b}"], row[f"{a} − {b} ±"] = t_interval(d)
        rows.append(row)
    return pd.DataFrame(rows)


def over_seeds(seeds, one_seed, failures: FailureLog | None = None):
    """Call ``one_seed(seed) -> (table, *rest)`` for each seed: the tables concatenated, and each seed's rest as
    ``{seed: rest}`` (what the figures are drawn from).

    With ``failures``, a seed whose ``one_seed`` raises is recorded there (method ``ALL_METHODS``) and left out of
    both, and the other seeds go on; with none of them left the table is empty.
    """
    import pandas as pd

    if failures is None:
        outputs = [(seed, one_seed(seed)) for seed in seeds]
    else:
        outputs = [(seed, failures.attempt(seed, ALL_METHODS, one_seed, seed)) for seed in seeds]
        outputs = [(seed, out) for seed, out in outputs if out is not None]
    rests = {}
    for seed, out in outputs:
        rests.setdefault(seed, out[1:])
    tables = [out[0] for _, out in outputs]
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()), rests
