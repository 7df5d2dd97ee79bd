"""What the live dashboard costs a run: the same HyperOptimizer run with and without ``hg.widgets.Dashboard``.

Problem: logistic regression on 1,000 packaged MNIST images, heavy-ball momentum, T inner steps; learning rate,
momentum and weight decay tuned by Adam in reverse mode. The dashboard runs in widget mode (it renders every
PNG it would send to a notebook; only the sending is missing outside a kernel). Each contender is run once to
compile, then timed ``--repeats`` times alternately; printed: median run times, the overhead in percent, the
number of redraws and their total time.

Run: ``python benchmarks/dashboard_overhead.py`` (3¾ minutes on 2 cores shared at a load average of 8–10).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hgkit as hg
from hgkit.datasets import hyper_cleaning_mnist
from hgkit.widgets.dashboard import Dashboard


def setup(n: int):
    split = hyper_cleaning_mnist()
    train = jnp.asarray(split.x_train[:n]), jnp.asarray(split.y_train[:n])
    val = jnp.asarray(split.x_val[:n]), jnp.asarray(split.y_val[:n])

    def cross_entropy(w, x, y):
        log_p = jax.nn.log_softmax(x @ w["W"] + w["b"])
        return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))

    problem = hg.BilevelProblem(
        init=lambda hp, key: {"W": jnp.zeros((784, 10)), "b": jnp.zeros(10)},
        train_loss=lambda w, hp, b: cross_entropy(w, *b) + 0.5 * hp["wd"] * jnp.sum(w["W"] ** 2),
        val_loss=lambda w, hp, b: cross_entropy(w, *b),
        optimizer=hg.optim.momentum(lr="lr", momentum="mu"),
    )
    opt = hg.HyperOptimizer(
        problem,
        hyper_optimizer=optax.adam(0.05),
        constraints={"lr": hg.constraints.log(), "wd": hg.constraints.log(), "mu": hg.constraints.box(0.0, 0.99)},
    )
    hparams = {"lr": jnp.asarray(0.1), "mu": jnp.asarray(0.5), "wd": jnp.asarray(1e-3)}
    return opt, hparams, train, val


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hyper-iterations", type=int, default=60)
    parser.add_argument("--T", type=int, default=50)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    opt, hparams, train, val = setup(args.n)

    def run(callbacks):
        start = time.perf_counter()
        opt.run(
            hparams,
            args.hyper_iterations,
            args.T,
            train,
            val,
            key=jax.random.key(0),
            callbacks=callbacks,
            progress=False,
        )
        return time.perf_counter() - start

    run([])  # compile
    run([Dashboard(mode="widget")])  # compile, and load matplotlib
    plain, live, draws, drawing = [], [], [], []
    for _ in range(args.repeats):
        plain.append(run([]))
        dash = Dashboard(mode="widget")
        live.append(run([dash]))
        draws.append(dash.draws)
        drawing.append(dash.draw_seconds)
    p, d = float(np.median(plain)), float(np.median(live))
    print(f"{args.hyper_iterations} hyper-iterations of T={args.T} on {args.n} images, median of {args.repeats}:")
    print(f"  without dashboard: {p:.2f} s ({1e3 * p / args.hyper_iterations:.1f} ms per hyper-iteration)")
    print(f"  with dashboard:    {d:.2f} s")
    print(f"  overhead:          {100 * (d - p) / p:+.1f} %")
    print(f"  redraws per run:   {draws} taking {[round(s, 2) for s in drawing]} s")


if __name__ == "__main__":
    main()
