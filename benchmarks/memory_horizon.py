"""Memory and time against the horizon T: full reverse, checkpointed reverse, truncated reverse, forward, implicit.

Problem: an MLP 32-64-10 (tanh) on 256 synthetic examples, full-batch heavy-ball momentum, float32;
hyperparameters: learning rate, momentum, log weight decay (m = 3, so forward mode is in its element).

Three parts (``--part``, all by default):

* ``horizons``: for T in (100, 1000, 5000) and each method, the compiled program's memory (deterministic;
  :func:`hgkit.hypergrad.planner.program_bytes`, temporaries plus outputs, as hgkit defines memory; also in units of
  the training state |s|), the median wall time of the compiled hypergradient (of 3 calls; one call at
  T = 5000), and both as ratios to full reverse mode at the same T. ``--rss`` adds the peak resident memory of a
  fresh process per point (slower). Truncation at K = 100 is left out at T = 100, where it is full reverse mode;
  ``store=hg.Residuals()`` (on this MLP one step's residuals are 17.9 states) at T = 5000.
* ``long``: full reverse, √T and binomial checkpointing with 32 slots at T = 1,000, 10,000 and 50,000: compiled
  memory in units of |s| and time ÷ full reverse's, timed back to back in CPU time (the median over rounds of
  the ratio within a round: a loaded machine shifts it less than separate medians; ``--time-up-to`` leaves the
  longest horizons memory only).
* ``budget``: the planner (``hg.Reverse.within(B, ...)``) at T = 10,000 for budgets from binomial checkpointing with
  4 slots up to every step's residuals: the plan it picks, its compiled memory (≤ B) and its time ÷ full
  reverse's; the curve of time against memory goes to ``docs/results/memory-budget/`` (PNG and CSV).

Run: ``python benchmarks/memory_horizon.py`` (about 25 minutes on 2 busy cores); ``--quick`` for T in (100, 500),
the long part at T in (1000, 2000) and the budget curve at T = 2000.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import core_cost  # a sibling script: benchmarks/ is on sys.path when this one runs
import jax
import jax.numpy as jnp
import numpy as np

import hgkit as hg
from hgkit.hypergrad.planner import program_bytes

N, D, HIDDEN, CLASSES = 256, 32, 64, 10


def data():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(D, CLASSES))

    def draw(n):
        x = rng.normal(size=(n, D)).astype(np.float32)
        return jnp.asarray(x), jnp.asarray((x @ teacher).argmax(axis=1))

    return draw(N), draw(N)


def init(hp, key):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {
        "W1": jax.random.normal(k1, (D, HIDDEN)) / np.sqrt(D),
        "b1": jnp.zeros(HIDDEN),
        "W2": jax.random.normal(k2, (HIDDEN, CLASSES)) / np.sqrt(HIDDEN),
        "b2": jnp.zeros(CLASSES),
    }


xent = core_cost.xent  # the same MLP's cross-entropy


def train_loss(p, hp, batch):
    return xent(p, batch) + 0.5 * jnp.exp(hp["log_wd"]) * sum(jnp.sum(w**2) for w in jax.tree_util.tree_leaves(p))


PROBLEM = hg.BilevelProblem(
    init=init, train_loss=train_loss, val_loss=lambda p, hp, b: xent(p, b), optimizer=hg.optim.momentum("lr", "mu")
)
HP = {"lr": jnp.asarray(0.3), "mu": jnp.asarray(0.5), "log_wd": jnp.asarray(-6.0)}
METHODS = {
    "reverse": hg.Reverse(),  # stores states here (one step's residuals are 17.9 states)
    "reverse Segments(sqrt)": hg.Reverse(store=hg.Segments("sqrt")),
    "reverse Binomial(32)": hg.Reverse(store=hg.Binomial(32)),
    "reverse Residuals()": hg.Reverse(store=hg.Residuals()),
    "reverse truncate=100": hg.Reverse(truncate=100),
    "forward (m=3)": hg.Forward(),
    "implicit (cg, 50 it.)": hg.Implicit(
        iterations=50, tol=1e-30
    ),  # tol: always 50 products (flagged, not raised here)
}


OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "memory-budget"


def compiled(name, T, train, val):
    return compile_method(METHODS[name], T, train, val)


def compile_method(method, T, train, val):
    return jax.jit(lambda h: hg.hypergradient_result(PROBLEM, h, T, train, val, method=method).grads)


def state_bytes():
    state = hg.initial_state(PROBLEM, HP, None)
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))


def back_to_back(executables: dict, rounds: int, clock: str = "cpu") -> dict:
    """Per name, the median over ``rounds`` of its time ÷ the first name's in the same round (each timed once per
    round, the order rotating), and its median time.

    ``clock="cpu"`` (default) times this process's CPU time (all its threads): XLA runs these programs on one
    core, so that is the work done, which other processes on a shared machine inflate far less than the wall
    time (``clock="wall"``)."""
    import time

    now = time.process_time if clock == "cpu" else time.perf_counter
    names = list(executables)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            start = now()
            jax.block_until_ready(executables[n](HP))
            times[n].append(now() - start)
    base = np.asarray(times[names[0]])
    return {n: (float(np.median(np.asarray(times[n]) / base)), float(np.median(times[n]))) for n in names}


def long_horizons(horizons, train, val, s_bytes, time_up_to=50_000, rounds=3):
    """Full reverse, √T and binomial checkpointing (32 slots) at long horizons: memory in |s|, time ÷ reverse
    (CPU time, back to back; horizons above ``time_up_to``: memory only)."""
    names = ("reverse", "reverse Segments(sqrt)", "reverse Binomial(32)")
    head = f"{'T':>6s} {'method':26s} {'memory MiB':>12s} {'mem/|s|':>9s} {'mem/rev':>8s} {'time/rev':>9s}"
    print(f"\n{head} {'CPU s':>8s}")
    for T in horizons:
        executables = {n: compiled(n, T, train, val).lower(HP).compile() for n in names}
        mem = {n: program_bytes(e) for n, e in executables.items()}
        ratios = {n: (float("nan"), float("nan")) for n in names}
        if T <= time_up_to:
            # Compiled ahead of time: no warm-up call needed; one round at the longest horizons.
            ratios = back_to_back(executables, rounds=rounds if T <= 10_000 else 1)
        for n in names:
            print(
                f"{T:6d} {n:26s} {mem[n] / 2**20:12.2f} {mem[n] / s_bytes:9.1f} {mem[n] / mem['reverse']:8.4f} "
                f"{ratios[n][0]:9.2f} {ratios[n][1]:8.2f}",
                flush=True,
            )


def budget_curve(T, train, val, s_bytes, slots=(4, 8, 16, 32, 64, 128), max_gib=8.0, plot=True):
    """The planner's choice against the budget at horizon T: the least budget of each plan, its compiled memory
    (:func:`~hgkit.hypergrad.planner.program_bytes`, the unit of the budget) and its time ÷ full reverse's (back to
    back, 2 rounds); a PNG and CSV under ``docs/results/memory-budget``.

    ``hg.Reverse(store=hg.Residuals())`` is measured beside them: the planner does not choose it on this MLP, where
    one step's residuals are 17.9 states."""
    import pandas as pd

    def least(method):
        return hg.plan(method, PROBLEM, HP, T, train, val).predicted_bytes

    budgets = [least(hg.Reverse(store=hg.Binomial(s))) for s in slots]
    budgets += [least(hg.Reverse(store=hg.Segments("sqrt"))), least(hg.Reverse(store=hg.States()))]
    points = [(b, hg.Reverse.within(b, PROBLEM, HP, T, train, val), True) for b in sorted(set(budgets))]
    points.append((least(hg.Reverse(store=hg.Residuals())), hg.Reverse(store=hg.Residuals()), False))
    reverse = compile_method(hg.Reverse(store=hg.States()), T, train, val).lower(HP).compile()
    jax.block_until_ready(reverse(HP))
    rows, seen = [], set()
    print(f"\nT = {T}: the planner's plan for each budget (time ÷ full reverse mode, back to back)")
    for budget, method, chosen in points:
        plan = hg.plan(method, PROBLEM, HP, T, train, val)
        what = repr(plan.store)
        if what in seen:
            continue
        seen.add(what)
        if budget > max_gib * 2**30:
            print(f"  budget {budget / 2**20:9.1f} MiB: {what}, skipped (over --max-gib {max_gib})")
            continue
        executable = compile_method(method, T, train, val).lower(HP).compile()
        temp = program_bytes(executable)
        jax.block_until_ready(executable(HP))
        ratio, seconds = back_to_back({"reverse": reverse, "plan": executable}, rounds=2)["plan"]
        rows.append(
            dict(
                T=T, budget_mib=budget / 2**20, plan=what, chosen_by_planner=chosen,
                predicted_mib=plan.predicted_bytes / 2**20, compiled_mib=temp / 2**20,
                compiled_states=temp / s_bytes, fits=temp <= budget, prediction_error=plan.predicted_bytes / temp - 1,
                steps_per_step=plan.recompute_factor, time_ratio=ratio, seconds=seconds,
            )
        )  # fmt: skip
        print(
            f"  budget {budget / 2**20:9.2f} MiB ({budget / s_bytes:8.0f}·|s|): {what:24s} compiled "
            f"{temp / 2**20:9.2f} MiB (prediction {100 * rows[-1]['prediction_error']:+.1f}%), "
            f"{plan.recompute_factor:5.2f} steps per step, time {ratio:5.2f}× reverse ({seconds:.2f} s)"
            + ("" if chosen else "  [Residuals() given: not the planner's choice]"),
            flush=True,
        )
    table = pd.DataFrame(rows)
    if plot and len(table):
        OUT.mkdir(parents=True, exist_ok=True)
        table.to_csv(OUT / "memory-budget.csv", index=False)
        _plot(table, T, s_bytes, OUT / "memory-budget.png")
        print(f"  wrote {OUT / 'memory-budget.png'} and memory-budget.csv")
    return table


def _plot(table, T, s_bytes, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    chosen, given = table[table.chosen_by_planner], table[~table.chosen_by_planner]
    ax.plot(
        chosen.compiled_mib, chosen.time_ratio, "o-", color="tab:blue",
        label="hg.Reverse.within(B, ...)'s plan (s=…: binomial checkpointing, s slots)",
    )  # fmt: skip
    ax.plot(given.compiled_mib, given.time_ratio, "s", color="tab:orange", label="hg.Reverse(store=hg.Residuals())")
    ax.legend(fontsize=8, loc="upper center")
    for row in table.itertuples():
        binomial = row.plan.startswith("Binomial")
        label = row.plan.replace("Binomial(slots=", "s=").replace(")", "") if binomial else row.plan.replace("'", "")
        names = {"Segments(length=sqrt)": "√T", "States()": "every state", "Residuals()": "every step's residuals"}
        # (the committed CSV was written before 0.3, with the plans named "sqrt", "states", "residuals")
        names.update({"sqrt": "√T", "states": "every state", "residuals": "every step's residuals"})
        label = names.get(label, label)
        offset = (6, -3) if binomial else (-8, 8)  # binomial: "s=slots" to the right; the others above
        ax.annotate(label, (row.compiled_mib, row.time_ratio), textcoords="offset points", xytext=offset, fontsize=8)
    ax.set_xscale("log")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("compiled memory of the hypergradient (MiB, log scale)")
    ax.set_ylabel("time ÷ full reverse mode (states)")
    top = ax.secondary_xaxis("top", functions=(lambda m: m * 2**20 / s_bytes, lambda n: n * s_bytes / 2**20))
    top.set_xlabel("in training states |s|")
    fig.suptitle(f"hg.Reverse.within(B, ...): the fastest plan that fits, T = {T:,} (MLP 32-64-10)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter horizons, one timed repeat")
    parser.add_argument(
        "--part", nargs="+", choices=("horizons", "long", "budget"), default=["horizons", "long", "budget"]
    )
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS in a fresh process per point")
    parser.add_argument("--long-T", nargs="+", type=int, help="horizons of the long part (default 1000 10000 50000)")
    parser.add_argument("--time-up-to", type=int, default=50_000, help="long part: memory only above this T")
    parser.add_argument("--rounds", type=int, default=3, help="long part: back-to-back rounds (T ≤ 10,000)")
    parser.add_argument("--max-gib", type=float, default=8.0, help="skip budget points above this memory")
    parser.add_argument("--replot", action="store_true", help="redraw the budget figure from its CSV, run nothing")
    parser.add_argument("--one", nargs=2, metavar=("NAME", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replot:
        import pandas as pd

        table = pd.read_csv(OUT / "memory-budget.csv")
        _plot(table, int(table["T"].iloc[0]), state_bytes(), OUT / "memory-budget.png")
        return
    train, val = data()
    if args.one:
        jax.block_until_ready(compiled(args.one[0], int(args.one[1]), train, val)(HP))
        print(json.dumps({"peak_rss": core_cost.own_peak_rss()}))
        return
    s_bytes = state_bytes()
    print(
        f"MLP {D}-{HIDDEN}-{CLASSES}, {N} examples, momentum, float32, m = 3; |s| = {s_bytes / 2**10:.1f} KiB "
        f"({jax.devices()[0].platform}, jax {jax.__version__})"
    )
    if "horizons" in args.part:
        horizons(args, train, val, s_bytes)
    if "long" in args.part:
        horizons_ = args.long_T or ((1000, 2000) if args.quick else (1000, 10_000, 50_000))
        long_horizons(horizons_, train, val, s_bytes, time_up_to=args.time_up_to, rounds=args.rounds)
    if "budget" in args.part:
        budget_curve(2000 if args.quick else 10_000, train, val, s_bytes, max_gib=args.max_gib, plot=not args.quick)


def horizons(args, train, val, s_bytes):
    horizons = (100, 500) if args.quick else (100, 1000, 5000)
    head = f"{'T':>5s} {'method':26s} {'memory MiB':>12s} {'mem/|s|':>9s} {'mem/rev':>8s} {'time s':>8s}"
    head += f" {'time/rev':>9s}"
    print(head + (f" {'peak RSS MiB':>12s}" if args.rss else ""))
    for T in horizons:
        base = None
        repeats = 1 if args.quick or T > 1000 else 3  # the long runs once
        for name in METHODS:
            if name.startswith("reverse truncate") and T <= 100:
                continue  # K = 100 = T is full reverse mode
            if name == "reverse Residuals()" and T > 1000:
                continue  # 17.9 states a step: 2 GiB at T = 5000, for the time of full reverse
            executable = compiled(name, T, train, val).lower(HP).compile()  # compiled once, timed after
            sec = core_cost.median_time(executable, (HP,), repeats, warmup=False)
            mem = program_bytes(executable)
            base = base or (mem, sec)
            line = (
                f"{T:5d} {name:26s} {mem / 2**20:12.2f} {mem / s_bytes:9.1f} {mem / base[0]:8.3f} "
                f"{sec:8.3f} {sec / base[1]:9.2f}"
            )
            rss = core_cost.peak_rss(name, T, script=__file__) if args.rss else None  # a fresh process per point
            print(line + (f" {rss / 2**20:12.0f}" if args.rss else ""), flush=True)


if __name__ == "__main__":
    main()
