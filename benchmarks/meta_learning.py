"""One meta-learning hyper-iteration: hgkit against what a user writes by hand (issue 18's figure; target ≤ 1.15×).

Problem: Omniglot 5-way 1-shot episodes (the packaged background sets, ``hgkit.datasets.episodes``), 15 queries per
class, a meta-batch of 16 tasks, a conv-4 network (3×3 convolutions, instance norm, ReLU, 2×2 max-pool; ``--width``
filters). Two learners:

* **MAML**: λ = every weight of the network (the four conv blocks and the linear output layer), the inner loop T
  steps of SGD from λ on the support set; the exact second-order hypergradient.
* **hyper-representation**: λ = the conv blocks; the inner weights a linear head on the L2-normalised features,
  started at zero, T steps of gradient descent.

Contenders, on the same inputs, compiled before timing, timed back to back in alternating rounds (so that load on
the machine hits both):

* hgkit: ``jax.jit(hg.meta_hypergradient_result)`` with ``hg.Reverse()`` (its default store), and
  ``hg.Reverse(store=hg.Binomial(slots))`` for the long inner loop;
* by hand: ``jax.jit(jax.value_and_grad(λ ↦ mean over tasks of query_loss(unrolled inner SGD)))`` with ``jax.vmap``
  over tasks, the inner loop a Python ``for`` (T small) or a ``lax.scan`` (T = 100, ``--long``).

Printed: the median time of one call of each and the ratio hgkit ÷ by hand; the memory of each compiled program
(``hgkit.measure``'s definition: XLA's temporaries plus outputs); with ``--long``, the same at T = 100 inner steps
of MAML with ``hg.Binomial`` against storing every state (``hg.States()``) and against the hand-written scan.

Run: ``python benchmarks/meta_learning.py`` (minutes on 2 CPU cores); ``--parts maml,repr,long`` adds the T = 100
part. The hyper-representation is also timed against the literal unrolling of the same inner problem ("features
in every step"): hgkit's ``train_loss(w, λ, batch)`` embeds the support set at every inner step, where a user
writing the loop by hand computes it once.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import hgkit as hg
from hgkit.datasets import episodes, omniglot, omniglot_split
from hgkit.hypergrad.planner import program_bytes

WAYS, SHOTS, QUERIES = 5, 1, 15


# ----- the network --------------------------------------------------------------------------------------------


def conv_blocks(key, width: int, blocks: int = 4) -> list[dict]:
    """He-initialised 3×3 convolutions, as (9·channels in, channels out) matrices, with biases."""
    out, channels = [], 1
    for k in jax.random.split(key, blocks):
        w = jax.random.normal(k, (9 * channels, width)) * jnp.sqrt(2.0 / (9 * channels))
        out.append({"w": w, "b": jnp.zeros(width)})
        channels = width
    return out


def embed(blocks: list[dict], x):
    """Features of images ``x`` (n, 28, 28, 1): conv → instance norm → ReLU → 2×2 max-pool per block, flattened.

    The convolution is a matrix product of 3×3 patches: under ``vmap`` over tasks with each task's own weights
    (MAML's inner steps), XLA's CPU backend turns a convolution into a grouped one, several times slower than the
    batched matrix product this is."""
    for p in blocks:
        patches = jax.lax.conv_general_dilated_patches(
            x, (3, 3), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        x = patches @ p["w"] + p["b"]
        mean, var = jnp.mean(x, axis=(1, 2), keepdims=True), jnp.var(x, axis=(1, 2), keepdims=True)
        x = jax.nn.relu((x - mean) * jax.lax.rsqrt(var + 1e-5))
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
    return x.reshape(x.shape[0], -1)


def cross_entropy(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def feature_size(width: int) -> int:
    return width * 2 * 2  # 28 → 14 → 7 → 4 → 2


# ----- the two learners, as hgkit problems and by hand -----------------------------------------------------------


def maml(width: int, inner_lr: float):
    """MAML: the weights are the network, λ their start."""

    def loss(w, hp, batch):
        return cross_entropy(embed(w["blocks"], batch["x"]) @ w["head"]["w"] + w["head"]["b"], batch["y"])

    problem = hg.BilevelProblem(
        init=lambda hp, key: hp["theta"], train_loss=loss, val_loss=loss, optimizer=hg.optim.sgd(inner_lr)
    )
    k1, k2 = jax.random.split(jax.random.key(0))
    head = {"w": jax.random.normal(k2, (feature_size(width), WAYS)) * 0.01, "b": jnp.zeros(WAYS)}
    hparams = {"theta": {"blocks": conv_blocks(k1, width), "head": head}}

    def by_hand(hp, s, q, T, scan):
        def one(s, q):
            def step(w, _):
                g = jax.grad(loss)(w, None, s)
                return jax.tree.map(lambda a, b: a - inner_lr * b, w, g), None

            w = hp["theta"]
            if scan:
                w, _ = jax.lax.scan(step, w, None, length=T)
            else:
                for _ in range(T):
                    w, _ = step(w, None)
            return loss(w, None, q)

        return jnp.mean(jax.vmap(one)(s, q))

    return problem, hparams, by_hand


def hyper_representation(width: int, inner_lr: float, scale: float = 10.0):
    """The hyper-representation: λ the conv blocks, the weights a linear head from zero on normalised features."""

    def features(hp, x):
        f = embed(hp["repr"], x)
        return scale * f / (jnp.linalg.norm(f, axis=1, keepdims=True) + 1e-8)

    def loss(w, hp, batch):
        return cross_entropy(features(hp, batch["x"]) @ w["w"] + w["b"], batch["y"])

    problem = hg.BilevelProblem(
        init=lambda hp, key: hg.linear_head(feature_size(width), WAYS),
        train_loss=loss,
        val_loss=loss,
        optimizer=hg.optim.sgd(inner_lr),
    )
    hparams = {"repr": conv_blocks(jax.random.key(0), width)}

    def by_hand(hp, s, q, T, scan):
        def one(s, q):
            # What a careful user writes: the support features once, then T steps on the head.
            fs, fq = features(hp, s["x"]), features(hp, q["x"])

            def head_loss(w, f, y):
                return cross_entropy(f @ w["w"] + w["b"], y)

            w = hg.linear_head(feature_size(width), WAYS)
            for _ in range(T):
                g = jax.grad(head_loss)(w, fs, s["y"])
                w = jax.tree.map(lambda a, b: a - inner_lr * b, w, g)
            return head_loss(w, fq, q["y"])

        return jnp.mean(jax.vmap(one)(s, q))

    def literal(hp, s, q, T, scan):
        def one(s, q):
            # The same inner problem as hgkit's, unrolled: the loss embeds the support set at every step.
            w = hg.linear_head(feature_size(width), WAYS)
            for _ in range(T):
                w = jax.tree.map(lambda a, b: a - inner_lr * b, w, jax.grad(loss)(w, hp, s))
            return loss(w, hp, q)

        return jnp.mean(jax.vmap(one)(s, q))

    by_hand.literal = literal
    return problem, hparams, by_hand


# ----- timing -------------------------------------------------------------------------------------------------


def compiled(fn, *args):
    c = jax.jit(fn).lower(*args).compile()
    return c, program_bytes(c)


def race(calls: dict, args, rounds: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each compiled function, in alternating rounds."""
    times = {name: [] for name in calls}
    for fn in calls.values():
        jax.block_until_ready(fn(*args))  # warm
    for _ in range(rounds):
        for name, fn in calls.items():
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(fn(*args))
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def compare(title, problem, hparams, by_hand, support, query, T, methods, rounds, repeats, scan=False):
    print(f"\n{title}: T = {T} inner steps, meta-batch {support['x'].shape[0]}, {WAYS}-way {SHOTS}-shot")
    calls, memory, grads = {}, {}, {}
    for name, method in methods.items():
        fn = lambda hp, s, q, method=method: hg.meta_hypergradient_result(problem, hp, T, s, q, method=method)[:2]  # noqa: E731
        calls[name], memory[name] = compiled(fn, hparams, support, query)
    hand = lambda hp, s, q: jax.value_and_grad(by_hand)(hp, s, q, T, scan)  # noqa: E731
    calls["by hand"], memory["by hand"] = compiled(hand, hparams, support, query)
    if hasattr(by_hand, "literal"):
        same = lambda hp, s, q: jax.value_and_grad(by_hand.literal)(hp, s, q, T, scan)  # noqa: E731
        calls["by hand, features in every step"], memory["by hand, features in every step"] = compiled(
            same, hparams, support, query
        )
    for name, fn in calls.items():
        grads[name] = fn(hparams, support, query)
    ref = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads["by hand"][1])])
    seconds = race(calls, (hparams, support, query), rounds, repeats)
    print(
        f"  {'contender':34s} {'time/call':>10s} {'÷ by hand':>10s} {'memory MiB':>11s} {'÷ by hand':>10s} "
        "max|Δg|/max|g|"
    )
    for name in calls:
        g = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads[name][1])])
        err = float(np.max(np.abs(g - ref)) / np.max(np.abs(ref)))
        print(
            f"  {name:34s} {seconds[name] * 1e3:8.1f}ms {seconds[name] / seconds['by hand']:10.3f} "
            f"{memory[name] / 2**20:11.1f} {memory[name] / memory['by hand']:10.3f} {err:.1e}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--T", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="maml,repr", help="which of maml, repr, long (T = 100) to run")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")

    data = omniglot()
    train_classes, _ = omniglot_split(data)
    sampler = episodes(data, train_classes, ways=WAYS, shots=SHOTS, queries=QUERIES)
    support, query = sampler.batch(jax.random.key(1), args.tasks)

    if "maml" in parts:
        problem, hparams, by_hand = maml(args.width, inner_lr=0.4)
        compare("MAML", problem, hparams, by_hand, support, query, args.T, {"hgkit Reverse()": hg.Reverse()},
                args.rounds, args.repeats)  # fmt: skip
    if "repr" in parts:
        problem, hparams, by_hand = hyper_representation(args.width, inner_lr=1.0)
        compare("hyper-representation", problem, hparams, by_hand, support, query, args.T,
                {"hgkit Reverse()": hg.Reverse()}, args.rounds, args.repeats)  # fmt: skip
    if "long" in parts:
        T = 100
        problem, hparams, by_hand = maml(args.width, inner_lr=0.05)
        methods = {
            "hgkit Reverse(States())": hg.Reverse(store=hg.States()),
            "hgkit Reverse(Binomial(slots=10))": hg.Reverse(store=hg.Binomial(slots=10)),
        }
        compare("MAML, long inner loop", problem, hparams, by_hand, support, query, T, methods, 2, 1, scan=True)


if __name__ == "__main__":
    main()
