"""Why RTHO trailed random search on the real-time experiment: the runs behind RESULTS.md's study, and its figures.

    .venv/bin/python benchmarks/real_time_study.py [--out DIR] [--seeds 0,1,2] [--part PART ...] [--figures-only]

On the `real-time` experiment's default config *as it was before the study* (MLP 784-100-10, T = 3000, Δ = 50,
learning rate, momentum and weight decay tuned by Adam with step 0.05 on the real-time hypergradient of the
validation cross-entropy; the experiment's default step is now 0.2, chosen by this study), one seed after the other:

* ``baseline``: the experiment's three methods (fixed, RTHO, random search), keeping every random-search draw's
  validation loss and error, RTHO's hypergradient norms per chunk, and a fixed run at RTHO's final values;
* ``sweep``: RTHO with Adam's step (hyper_lr) × Δ, from the same start;
* ``start``: RTHO from other starting values; ``clip``: Adam after clipping the hypergradient.

Every choice the study makes is on validation data; test accuracy is reported for the final table only. Appends one
row per run to ``study.csv`` in ``--out`` (default: docs/results/real-time-study/; runs already there are skipped,
so the script resumes where it stopped), then writes from ``study.csv`` and ``norms.csv`` the tables ``study.md``
and the figures ``hypergradient-norms.png`` (RTHO's hypergradient per chunk and the hyperparameters it moved),
``objective.png`` (validation cross-entropy against validation error of every run: the objective RTHO descends is
not the one random search is judged by) and ``sweep.png`` (RTHO's validation error against Adam's step for each
Δ). ``--figures-only`` skips the runs.

RESULTS.md's study was made with the default parts on seeds 0-2 (the sweep, start and clip on seed 0), then
``--seeds 1,2 --part sweep --sweep-seeds 1,2 --hyper-lrs 0.1,0.2 --deltas 50``: about 40 minutes on the 2 loaded cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pandas as pd  # noqa: E402

import hgkit as hg  # noqa: E402
from hgkit.experiments import realtime_tuning as rt  # noqa: E402
from hgkit.experiments._models import error_rate, mlp  # noqa: E402
from hgkit.experiments._report import markdown_table  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "real-time-study"
STUDY_CONFIG = dataclasses.replace(rt.DEFAULT, hyper_lr=0.05)  # the experiment's default before the study


# ----- the runs -------------------------------------------------------------------------------------------------


def rtho(config, problem, batch, data, key, hp0=None, clip=None):
    """RTHO as the experiment runs it, from ``hp0`` (the config's start by default), optionally clipping the
    hypergradient (``optax.clip``, elementwise) before Adam."""
    x_val, y_val = data["val"]
    tx = optax.adam(config.hyper_lr)
    if clip is not None:
        tx = optax.chain(optax.clip(clip), tx)
    opt = hg.HyperOptimizer(
        problem,
        method=hg.RealTime(delta=config.delta),
        hyper_optimizer=tx,
        constraints={"lr": hg.constraints.log(), "mu": hg.constraints.sigmoid(0.0, 1.0), "wd": hg.constraints.log()},
        metrics={"val_error": lambda params, hp: error_rate(mlp(params, x_val), y_val)},
    )
    hp0 = hp0 or dict(lr=config.lr, mu=config.momentum, wd=config.weight_decay)
    try:
        return opt.run(rt.hparams_of(**hp0), T=config.T, train_data=batch, val_data=data["val"], key=key,
                       progress=False)  # fmt: skip
    except hg.HyperDivergenceError as error:
        return error.result  # stopped == "diverged": the history and values up to the last finite chunk


def row_of(result, data, **extra) -> dict:
    if result.stopped == "diverged":
        end = {k: float(v) for k, v in result.hparams.items()}
        at = int(result.history["inner_steps"].iloc[-1]) if len(result.history) else 0
        return dict(**extra, **end, val_loss=np.nan, val_error=np.nan, test_accuracy=np.nan, diverged_after=at)
    val_loss, val_error = jax.device_get(rt.evaluate(result.state.params, *data["val"]))
    test_error = float(rt.evaluate(result.state.params, *data["test"])[1])
    end = {k: float(v) for k, v in result.hparams.items()}
    return dict(**extra, **end, val_loss=float(val_loss), val_error=float(val_error), test_accuracy=1 - test_error)


def fixed_row(problem, batch, hp, config, data, key, **extra) -> dict:
    params, _ = rt.train_fixed(problem, batch, rt.hparams_of(**hp), config, data, key)
    val_loss, val_error = jax.device_get(rt.evaluate(params, *data["val"]))
    test_error = float(rt.evaluate(params, *data["test"])[1])
    return dict(**extra, **hp, val_loss=float(val_loss), val_error=float(val_error), test_accuracy=1 - test_error)


def run_study(args) -> None:
    """The runs ``args.part`` asks for, appended to ``args.out / "study.csv"`` (runs already there are skipped)."""
    args.out.mkdir(parents=True, exist_ok=True)
    base = STUDY_CONFIG
    data = rt.load_data(base)
    rows = []
    csv = args.out / "study.csv"
    done = pd.read_csv(csv).to_dict("records") if csv.exists() else []

    def seen(**keys) -> bool:  # a run already in study.csv (the script resumes where it stopped)
        return any(all(_same(r.get(k), v) for k, v in keys.items()) for r in done)

    def record(row):
        rows.append(row)
        pd.DataFrame(done + rows).to_csv(csv, index=False)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    for seed in [int(s) for s in args.seeds.split(",")]:
        problem, batch = rt.make_problem(base, data, seed)
        key = jax.random.PRNGKey(seed)
        if "baseline" in args.part and not seen(part="baseline", run="RTHO", seed=seed):
            start = time.perf_counter()
            result = rtho(base, problem, batch, data, key)
            record(row_of(result, data, part="baseline", run="RTHO", seed=seed, hyper_lr=base.hyper_lr,
                          delta=base.delta, seconds=time.perf_counter() - start))  # fmt: skip
            columns = ["inner_steps", "grad_norm", "grad_norm.lr", "grad_norm.mu", "grad_norm.wd", "lr", "mu", "wd",
                       "val_loss", "val_error"]  # fmt: skip
            save_norms(args.out / "norms.csv", result.history[columns].assign(seed=seed))
            end = {k: float(v) for k, v in result.hparams.items()}
            record(fixed_row(problem, batch, end, base, data, key, part="baseline", run="fixed at RTHO's end",
                             seed=seed))  # fmt: skip
            hp0 = dict(lr=base.lr, mu=base.momentum, wd=base.weight_decay)
            record(fixed_row(problem, batch, hp0, base, data, key, part="baseline", run="fixed", seed=seed))
            draws = rt.sample_configs(base, rt.step_equivalents(base.T, 3)["random search"] // base.T, seed)
            for i, hp in enumerate(draws):
                record(fixed_row(problem, batch, hp, base, data, key, part="baseline", run=f"random draw {i}",
                                 seed=seed))  # fmt: skip
        if "sweep" in args.part and str(seed) in args.sweep_seeds.split(","):
            for delta in [int(d) for d in args.deltas.split(",")]:
                for hyper_lr in [float(h) for h in args.hyper_lrs.split(",")]:
                    if delta == base.delta and hyper_lr == base.hyper_lr:
                        continue  # the baseline run
                    if seen(part="sweep", seed=seed, hyper_lr=hyper_lr, delta=delta):
                        continue
                    config = dataclasses.replace(base, delta=delta, hyper_lr=hyper_lr)
                    start = time.perf_counter()
                    result = rtho(config, problem, batch, data, key)
                    record(row_of(result, data, part="sweep", run="RTHO", seed=seed, hyper_lr=hyper_lr, delta=delta,
                                  seconds=time.perf_counter() - start))  # fmt: skip
        if "start" in args.part and str(seed) in args.sweep_seeds.split(","):
            for hp0 in (dict(lr=0.1, mu=0.5, wd=1e-3), dict(lr=0.02, mu=0.9, wd=1e-3), dict(lr=0.02, mu=0.5, wd=1e-4)):
                start = ", ".join(f"{k} {v:g}" for k, v in hp0.items())
                if seen(part="start", run=f"RTHO from {start}", seed=seed):
                    continue
                result = rtho(base, problem, batch, data, key, hp0=hp0)
                record(row_of(result, data, part="start", run=f"RTHO from {start}", seed=seed,
                              hyper_lr=base.hyper_lr, delta=base.delta))  # fmt: skip
        if "clip" in args.part and str(seed) in args.sweep_seeds.split(","):
            for clip in (1.0, 0.1):
                if seen(part="clip", run=f"RTHO, hypergradient clipped at {clip:g}", seed=seed):
                    continue
                result = rtho(base, problem, batch, data, key, clip=clip)
                record(row_of(result, data, part="clip", run=f"RTHO, hypergradient clipped at {clip:g}", seed=seed,
                              hyper_lr=base.hyper_lr, delta=base.delta))  # fmt: skip


def save_norms(path: Path, frame: pd.DataFrame) -> None:
    """Add one seed's RTHO history (hypergradient norms per chunk) to ``norms.csv``, replacing that seed's."""
    if path.exists():
        old = pd.read_csv(path)
        frame = pd.concat([old[old["seed"] != frame["seed"].iloc[0]], frame], ignore_index=True)
    frame.to_csv(path, index=False)


def _same(a, b) -> bool:
    if isinstance(b, float):
        return a is not None and np.isclose(float(a), b)
    return a == b


# ----- the tables and figures -----------------------------------------------------------------------------------


def effective(frame: pd.DataFrame) -> pd.Series:
    """The heavy-ball step's size in the long run, η / (1 − μ)."""
    return frame["lr"] / (1 - frame["mu"])


def norms_figure(norms: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    for seed, group in norms.groupby("seed"):
        style = dict(alpha=1.0 if seed == norms["seed"].min() else 0.35)
        for name, color in (("lr", "tab:blue"), ("mu", "tab:orange"), ("wd", "tab:green")):
            label = {"lr": "∂f/∂η", "mu": "∂f/∂μ", "wd": "∂f/∂wd"}[name] if seed == norms["seed"].min() else None
            axes[0].plot(group["inner_steps"], group[f"grad_norm.{name}"], color=color, label=label, **style)
        axes[1].plot(group["inner_steps"], group["lr"] / (1 - group["mu"]), color="tab:red", **style,
                     label="η / (1 − μ)" if seed == norms["seed"].min() else None)  # fmt: skip
        axes[1].plot(group["inner_steps"], group["lr"], color="tab:blue", **style,
                     label="η" if seed == norms["seed"].min() else None)  # fmt: skip
        axes[2].plot(group["inner_steps"], group["val_error"], color="tab:red", **style)
    axes[0].set_yscale("log")
    axes[0].set_title("|hypergradient| per chunk (RTHO)")
    axes[1].set_yscale("log")
    axes[1].set_title("learning rate, and η / (1 − μ)")
    axes[2].set_yscale("log")
    axes[2].set_title("validation error")
    for ax in axes:
        ax.set_xlabel("inner step")
    axes[0].legend(fontsize="small")
    axes[1].legend(fontsize="small")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def objective_figure(study: pd.DataFrame, path: Path) -> None:
    base = study[study["part"] == "baseline"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    kinds = {
        "RTHO": ("tab:red", "o"),
        "fixed at RTHO's end": ("tab:purple", "s"),
        "fixed": ("0.4", "D"),
        "random draw": ("tab:green", "^"),
    }
    for kind, (color, marker) in kinds.items():
        rows = base[base["run"].str.startswith(kind)] if kind == "random draw" else base[base["run"] == kind]
        ax.scatter(rows["val_loss"], rows["val_error"], color=color, marker=marker, label=kind)
    ax.set_xlabel("validation cross-entropy (what RTHO descends)")
    ax.set_ylabel("validation error (what random search is judged by)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    ax.set_title("Every run of the study's baseline (seeds 0-2)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_figure(study: pd.DataFrame, path: Path) -> None:
    rows = study[(study["run"] == "RTHO") & study["part"].isin(["baseline", "sweep"])]
    seed0 = study["seed"].min()
    rows = rows[rows["seed"] == seed0]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    top = rows["val_error"].max() * 1.05
    for delta, group in rows.groupby("delta"):
        group = group.sort_values("hyper_lr")
        (line,) = ax.plot(group["hyper_lr"], group["val_error"], marker="o", label=f"RTHO, Δ = {int(delta)}")
        diverged = group[group["val_error"].isna()]
        for hyper_lr in diverged["hyper_lr"]:
            ax.plot([hyper_lr], [top], "x", color=line.get_color(), markersize=10)
            ax.annotate("diverged", (hyper_lr, top), textcoords="offset points", xytext=(-50, -4),
                        color=line.get_color())  # fmt: skip
    base = study[(study["part"] == "baseline") & (study["seed"] == seed0)]
    draws = base[base["run"].str.startswith("random draw")]
    ax.axhline(draws["val_error"].min(), color="tab:green", linestyle="--", label="random search (its best draw)")
    ax.axhline(base.loc[base["run"] == "fixed", "val_error"].iloc[0], color="0.4", linestyle=":", label="fixed")
    ax.set_xscale("log")
    ax.set_xlabel("Adam's step on (log η, logit μ, log wd)")
    ax.set_ylabel("validation error")
    ax.set_title(f"RTHO's settings (seed {seed0}, T = 3000)")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_figures(out: Path) -> None:
    """``study.md`` and the figures from ``study.csv`` and ``norms.csv`` in ``out``."""
    study = pd.read_csv(out / "study.csv")
    study["lr/(1-mu)"] = effective(study)
    columns = ["part", "run", "seed", "hyper_lr", "delta", "lr", "mu", "wd", "lr/(1-mu)", "val_loss", "val_error",
               "test_accuracy"]  # fmt: skip
    columns = [c for c in columns if c in study]
    sections = []
    for part, group in study.groupby("part", sort=False):
        sections.append(f"## {part}\n\n" + markdown_table(group[columns]))
    base = study[study["part"] == "baseline"]
    if len(base):
        picked = []
        for seed, group in base.groupby("seed"):
            draws = group[group["run"].str.startswith("random draw")]
            by_error, by_loss = draws.loc[draws["val_error"].idxmin()], draws.loc[draws["val_loss"].idxmin()]
            rtho = group[group["run"] == "RTHO"].iloc[0]
            picked.append(
                dict(
                    seed=seed,
                    rtho_val_loss=rtho.val_loss,
                    rtho_test=rtho.test_accuracy,
                    rs_by_error_val_loss=by_error.val_loss,
                    rs_by_error_test=by_error.test_accuracy,
                    rs_by_loss_val_loss=by_loss.val_loss,
                    rs_by_loss_test=by_loss.test_accuracy,
                )
            )
        picked = pd.DataFrame(picked)
        mean = picked.mean(numeric_only=True).to_frame().T.assign(seed="mean")
        sections.append("## random search picked by error or by cross-entropy\n\n" + markdown_table(
            pd.concat([picked, mean], ignore_index=True), digits=4))  # fmt: skip
        objective_figure(study, out / "objective.png")
    if (out / "norms.csv").exists():
        norms = pd.read_csv(out / "norms.csv")
        norms_figure(norms, out / "hypergradient-norms.png")
        growth = []
        for seed, group in norms.groupby("seed"):
            n = len(group)
            first, last = group.iloc[: n // 10], group.iloc[-(n // 10) :]
            median = {
                k: (np.median(first[f"grad_norm.{k}"]), np.median(last[f"grad_norm.{k}"])) for k in "lr mu wd".split()
            }
            ratio = {k: b / a for k, (a, b) in median.items()}
            growth.append({"seed": seed, **{f"{k} last/first": v for k, v in ratio.items()}})
        sections.append("## hypergradient norm, median of the last tenth of the chunks over the first\n\n"
                        + markdown_table(pd.DataFrame(growth)))  # fmt: skip
    if len(study[study["part"] == "sweep"]):
        sweep_figure(study, out / "sweep.png")
    (out / "study.md").write_text("# Why RTHO trails random search: the study's runs\n\n" + "\n\n".join(sections)
                                       + "\n")  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--part", nargs="*", default=["baseline", "sweep", "start", "clip"])
    parser.add_argument("--sweep-seeds", default="0", help="the seeds of the sweep, start and clip parts")
    parser.add_argument("--hyper-lrs", default="0.02,0.05,0.1,0.2")
    parser.add_argument("--deltas", default="10,50,150")
    parser.add_argument("--figures-only", action="store_true", help="only the tables and figures, from study.csv")
    args = parser.parse_args(argv)
    if not args.figures_only:
        run_study(args)
    write_figures(args.out)


if __name__ == "__main__":
    main()
