"""What the experiments' reports share: the seed loop (:func:`over_seeds`) and the means over seeds
(:func:`mean_over_seeds`), a DataFrame as a Markdown table, the table files (``NAME.md``, ``NAME.csv``) and the
figures (``NAME*.png``).

Example:
    >>> import pandas as pd
    >>> print(markdown_table(pd.DataFrame({"method": ["reverse"], "seconds": [0.0123456], "steps": [3000.0]})))
    | method | seconds | steps |
    |---|---|---|
    | reverse | 0.0123 | 3000 |
    >>> table, rest = over_seeds((0, 1), lambda seed: (pd.DataFrame({"seed": [seed], "error": [0.1 * seed]}), seed**2))
    >>> table["error"].tolist(), rest
    ([0.0, 0.1], {0: (0,), 1: (1,)})
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _cell(value, digits: int) -> str:
    if isinstance(value, float | np.floating):
        if np.isfinite(value) and float(value).is_integer() and abs(value) >= 1:
            return f"{int(value)}"  # counts averaged over seeds stay counts (3000, not 3e+03)
        return "nan" if np.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def markdown_table(frame, digits: int = 3) -> str:
    """A DataFrame as a GitHub Markdown table, floats to ``digits`` significant digits (no index)."""
    lines = ["| " + " | ".join(str(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines)


def write_tables(frame, out_dir: Path, stem: str, title: str, notes: str = "") -> list[Path]:
    """``stem.md`` (a title, the table, then ``notes``) and ``stem.csv`` (full precision) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv = out_dir / f"{stem}.md", out_dir / f"{stem}.csv"
    md.write_text(f"# {title}\n\n{markdown_table(frame)}\n" + (f"\n{notes}\n" if notes else ""))
    frame.to_csv(csv, index=False)
    return [md, csv]


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG and close it (reports draw many; pyplot would keep them all)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def mean_over_seeds(table, columns, spread=()):
    """Per method (in order of first appearance) the mean of ``columns`` over the seeds' rows, and the standard
    deviation of ``spread`` as ``<name>_std`` when there are several seeds."""
    grouped = table.groupby("method", sort=False)
    out = grouped[list(columns)].mean()
    if spread and table["seed"].nunique() > 1:
        out = out.join(grouped[list(spread)].std(), rsuffix="_std")
    return out.reset_index()


def over_seeds(seeds, one_seed):
    """Call ``one_seed(seed) -> (table, *rest)`` for each seed: the tables concatenated, and each seed's rest as
    ``{seed: rest}`` (what the figures are drawn from)."""
    import pandas as pd

    outputs = [(seed, one_seed(seed)) for seed in seeds]
    rests = {}
    for seed, out in outputs:
        rests.setdefault(seed, out[1:])
    return pd.concat([out[0] for _, out in outputs], ignore_index=True), rests
