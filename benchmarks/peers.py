"""hgkit against what its users would otherwise write: plain ``jax.grad``/``jax.jacfwd`` through ``lax.scan``,
PyTorch's ``higher`` and ``torchopt`` (issue 6).

Problems (real MNIST from :func:`hgkit.datasets.hyper_cleaning_mnist`: the first 500 training images to train on,
the first 500 validation images to judge by; full-batch heavy-ball momentum ``v ← μ v + g, w ← w − η v`` from the
same numpy-seeded initial weights in every contender):

* ``logreg``: softmax regression 784→10, loss ``mean_i(ω_i · nll_i)``, μ = 0.9 fixed; hyperparameters the learning
  rate η and the 500 per-example weights ω (m = 501: reverse mode's case).
* ``mlp``: MLP 784-64-10 (tanh), loss ``mean_i nll_i + ½ λ ‖w‖²``; hyperparameters η, μ and the weight decay λ
  (m = 3: forward mode's case).

Every (contender, problem, T) runs in a fresh subprocess (``--one``) that reports the compile time (first call minus
the median steady call), the median of 3-5 timed calls after that warm-up, the peak resident memory (``VmHWM``)
above what the process held after its imports, data and set-up (and the absolute peak), and the hypergradient.
The parent compares each float32 hypergradient with a float64 reference (hgkit reverse mode in float64) as the
largest, over the hyperparameter groups (η, ω, μ, λ), of ``‖g − g_ref‖_∞ / ‖g_ref‖_∞``.

"run peak" is the same high-water mark restarted after the first call (``/proc/self/clear_refs``), so it
leaves out XLA's compilation but keeps what the process retained from it.

A point whose predicted cost (from the same contender at the previous T, scaled linearly) exceeds
``--max-point-s`` runs one call only (memory and hypergradient, no timing), or is skipped if even that would
exceed it; the reason is printed.

Run: ``python benchmarks/peers.py --max-point-s 120`` (25-30 min on 2 shared cores, see BENCHMARKS.md; the torch
contenders need the ``bench`` extra: ``pip install -e ".[bench]"``); ``--quick`` runs T = 100 only.

``--interleaved`` measures time ratios that a loaded machine shifts less: the JAX contenders of one (problem, T)
are compiled in one fresh process and timed back to back, each once per round in a rotating order; it prints, per
contender, the median over rounds of its time ÷ ``jax.grad``'s in the same round (wall time, and the process's CPU
time, which other processes on a shared machine inflate far less), and XLA's compiled temporary memory ÷
``jax.grad``'s (e.g. ``--interleaved --problems logreg --T 1000 --contenders 'hgkit Reverse()'
'hgkit Reverse(store=Residuals())'``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Benchmark the checkout this file sits in (not whichever hgkit the interpreter has installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N = 500  # training and validation examples
HIDDEN = 64
LOGREG_MOMENTUM = 0.9
HPARAMS = {  # initial values; the order is the order of the flattened hypergradient
    "logreg": {"lr": 0.05, "ex_w": np.ones(N)},
    "mlp": {"lr": 0.05, "mu": 0.9, "wd": 1e-3},
}
PROBLEMS = tuple(HPARAMS)
T_VALUES = (100, 1000, 5000)
MANY_DIRECTIONS = "m=501 directions: O(T·m) — the mode for few hyperparameters"

# name -> (library, problems it is run on; the others are skipped with the reason given)
CONTENDERS = {
    "jax training (no gradient)": ("jax", PROBLEMS),
    "hgkit Reverse()": ("jax", PROBLEMS),
    'hgkit Reverse(store=Segments("sqrt"))': ("jax", PROBLEMS),
    "hgkit Reverse(store=States())": ("jax", PROBLEMS),
    "hgkit Reverse(store=Residuals())": ("jax", PROBLEMS),
    "hgkit Reverse(store=Binomial(32))": ("jax", PROBLEMS),
    "hgkit Forward()": ("jax", ("mlp",)),
    "hgkit RealTime(delta=T)": ("jax", ("mlp",)),
    "jax.grad through lax.scan": ("jax", PROBLEMS),
    "jax.jacfwd through lax.scan": ("jax", ("mlp",)),
    "higher (innerloop_ctx, SGD+momentum)": ("torch", PROBLEMS),
    "torchopt (functional sgd)": ("torch", PROBLEMS),
}
REFERENCE = "hgkit Reverse() float64"
BASELINE = "jax.grad through lax.scan"


class Unavailable(Exception):
    """A contender that cannot run in this environment (the message says why)."""


# ----- data (written once by the parent, read by every child: the same bytes for all contenders) -------------


def write_data(path: Path) -> None:
    from hgkit.datasets import hyper_cleaning_mnist

    split = hyper_cleaning_mnist()
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=split.x_train[:N],
        y_train=split.y_train[:N],
        x_val=split.x_val[:N],
        y_val=split.y_val[:N],
        # initial weights, as (in, out) matrices
        logreg_W=rng.normal(size=(784, 10)) * 0.01,
        logreg_b=np.zeros(10),
        mlp_W1=rng.normal(size=(784, HIDDEN)) / math.sqrt(784),
        mlp_b1=np.zeros(HIDDEN),
        mlp_W2=rng.normal(size=(HIDDEN, 10)) / math.sqrt(HIDDEN),
        mlp_b2=np.zeros(10),
    )


def initial_weights(data, problem: str) -> dict[str, np.ndarray]:
    prefix = f"{problem}_"
    return {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}


# ----- JAX contenders ---------------------------------------------------------------------------------------


def jax_contender(name: str, problem: str, T: int, data, dtype="float32"):
    """A jitted ``fn(hp, train, val)`` and its arguments; ``fn`` returns a dict of hypergradients keyed like
    ``HPARAMS[problem]`` (or the validation loss, for plain training). float64 needs ``jax_enable_x64``."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    import hgkit as hg

    train = (jnp.asarray(data["x_train"], dtype), jnp.asarray(data["y_train"]))
    val = (jnp.asarray(data["x_val"], dtype), jnp.asarray(data["y_val"]))
    w0 = {k: jnp.asarray(v, dtype) for k, v in initial_weights(data, problem).items()}
    hp = {k: jnp.asarray(v, dtype) for k, v in HPARAMS[problem].items()}

    def logits(w, x):
        if problem == "logreg":
            return x @ w["W"] + w["b"]
        return jnp.tanh(x @ w["W1"] + w["b1"]) @ w["W2"] + w["b2"]

    def nll(w, batch):
        x, y = batch
        return -jnp.take_along_axis(jax.nn.log_softmax(logits(w, x)), y[:, None], axis=1)[:, 0]

    def train_loss(w, hp, batch):
        if problem == "logreg":
            return jnp.mean(hp["ex_w"] * nll(w, batch))
        return jnp.mean(nll(w, batch)) + 0.5 * hp["wd"] * sum(jnp.sum(p**2) for p in jax.tree_util.tree_leaves(w))

    def val_loss(w, hp, batch):
        return jnp.mean(nll(w, batch))

    mu_spec = LOGREG_MOMENTUM if problem == "logreg" else "mu"

    if name.startswith("hgkit") or name == REFERENCE:
        problem_ = hg.BilevelProblem(
            init=lambda hp, key: w0,
            train_loss=train_loss,
            val_loss=val_loss,
            optimizer=hg.optim.momentum("lr", mu_spec),
        )
        if name in ("hgkit Reverse()", REFERENCE):
            method = hg.Reverse()
        elif name == 'hgkit Reverse(store=Segments("sqrt"))':
            method = hg.Reverse(store=hg.Segments("sqrt"))
        elif name == "hgkit Reverse(store=States())":
            method = hg.Reverse(store=hg.States())
        elif name == "hgkit Reverse(store=Residuals())":
            method = hg.Reverse(store=hg.Residuals())
        elif name == "hgkit Reverse(store=Binomial(32))":
            method = hg.Reverse(store=hg.Binomial(32))
        elif name == "hgkit Forward()":
            method = hg.Forward(max_directions=None)
        elif name == "hgkit RealTime(delta=T)":
            method = hg.RealTime(delta=T, max_directions=None)
        else:
            raise ValueError(f"unknown hgkit contender {name!r}")
        fn = jax.jit(lambda hp, tr, va: hg.hypergradient_result(problem_, hp, T, tr, va, method=method).grads)
        return fn, (hp, train, val)

    # What a JAX user writes without hgkit: the training loop in a scan, differentiated as a whole.
    def objective(hp, tr, va):
        mu = LOGREG_MOMENTUM if problem == "logreg" else hp["mu"]

        def step(carry, _):
            w, v = carry
            g = jax.grad(train_loss)(w, hp, tr)
            v = jax.tree_util.tree_map(lambda v, g: mu * v + g, v, g)
            w = jax.tree_util.tree_map(lambda w, v: w - hp["lr"] * v, w, v)
            return (w, v), None

        (w, _), _ = lax.scan(step, (w0, jax.tree_util.tree_map(jnp.zeros_like, w0)), None, length=T)
        return val_loss(w, hp, va)

    if name == "jax training (no gradient)":
        return jax.jit(objective), (hp, train, val)
    if name == "jax.grad through lax.scan":
        return jax.jit(jax.grad(objective)), (hp, train, val)
    if name == "jax.jacfwd through lax.scan":
        return jax.jit(jax.jacfwd(objective)), (hp, train, val)
    raise ValueError(f"unknown JAX contender {name!r}")


# ----- PyTorch contenders (the same maths, written as a PyTorch user would) ------------------------------------


def torch_contender(name: str, problem: str, T: int, data):
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"torch is not installed ({e}); pip install -e '.[bench]'") from None

    x, y = torch.from_numpy(data["x_train"]).float(), torch.from_numpy(data["y_train"]).long()
    xv, yv = torch.from_numpy(data["x_val"]).float(), torch.from_numpy(data["y_val"]).long()
    w0 = initial_weights(data, problem)
    hp = {k: torch.tensor(np.asarray(v), dtype=torch.float32, requires_grad=True) for k, v in HPARAMS[problem].items()}
    xent = torch.nn.functional.cross_entropy

    if problem == "logreg":
        model = torch.nn.Linear(784, 10)
        layers = [(model, "W", "b")]
    else:
        model = torch.nn.Sequential(torch.nn.Linear(784, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 10))
        layers = [(model[0], "W1", "b1"), (model[2], "W2", "b2")]
    with torch.no_grad():
        for layer, w, b in layers:  # torch stores (out, in)
            layer.weight.copy_(torch.from_numpy(w0[w].T.copy()))
            layer.bias.copy_(torch.from_numpy(w0[b]))

    def train_loss(out, params):
        if problem == "logreg":
            return torch.mean(hp["ex_w"] * xent(out, y, reduction="none"))
        return xent(out, y) + 0.5 * hp["wd"] * sum(torch.sum(p**2) for p in params)

    momentum = LOGREG_MOMENTUM if problem == "logreg" else hp["mu"]
    wrt = tuple(hp.values())

    if name.startswith("higher"):
        try:
            import higher
        except Exception as e:  # ImportError, or an incompatibility with this torch at import time
            raise Unavailable(
                f"higher fails to import with torch {torch.__version__}: {type(e).__name__}: {e}"
            ) from None
        opt = torch.optim.SGD(model.parameters(), lr=HPARAMS[problem]["lr"], momentum=0.9)
        override = {"lr": [hp["lr"]]}
        if problem == "mlp":
            override["momentum"] = [hp["mu"]]

        def fn():
            with higher.innerloop_ctx(model, opt, copy_initial_weights=True, override=override) as (fmodel, diffopt):
                for _ in range(T):
                    diffopt.step(train_loss(fmodel(x), list(fmodel.parameters())))
                return torch.autograd.grad(xent(fmodel(xv), yv), wrt)

        return fn, wrt

    if name.startswith("torchopt"):
        try:
            import torchopt
        except Exception as e:
            raise Unavailable(f"torchopt fails to import: {type(e).__name__}: {e}") from None

        def fn():
            params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
            optimizer = torchopt.sgd(lr=hp["lr"], momentum=momentum)
            state = optimizer.init(params)
            for _ in range(T):
                loss = train_loss(torch.func.functional_call(model, _named(model, params), (x,)), params)
                grads = torch.autograd.grad(loss, params, create_graph=True)
                updates, state = optimizer.update(grads, state, inplace=False)
                params = torchopt.apply_updates(params, updates, inplace=False)
            val = xent(torch.func.functional_call(model, _named(model, params), (xv,)), yv)
            return torch.autograd.grad(val, wrt)

        return fn, wrt
    raise ValueError(f"unknown torch contender {name!r}")


def _named(model, params):
    return {k: p for (k, _), p in zip(model.named_parameters(), params, strict=True)}


# ----- one point, in a fresh process ------------------------------------------------------------------------


def vmhwm() -> int:
    """This process's peak resident memory in bytes (``VmHWM`` starts afresh at exec, unlike a forked
    child's ``ru_maxrss``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def thread_settings(threads: int) -> dict[str, str]:
    """Environment that pins XLA's and PyTorch's CPU thread pools to ``threads`` (set before either imports)."""
    # JAX on the CPU unless HGKIT_BENCH_PLATFORM names another backend (e.g. "cuda" on a GPU machine).
    platform = os.environ.get("HGKIT_BENCH_PLATFORM", "cpu")
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "JAX_PLATFORMS": platform}
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def reset_peak() -> bool:
    """Restart ``VmHWM`` from the current resident size (Linux ≥ 4.0), so a later peak excludes compilation."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_one(name: str, problem: str, T: int, data_path: str, threads: int, timed: bool) -> dict:
    """Set up, call once (compilation and warm-up), then ``timed``: 3-5 timed calls; otherwise nothing more."""
    data = np.load(data_path)
    try:
        if CONTENDERS.get(name, ("jax",))[0] == "torch":
            fn, _ = torch_contender(name, problem, T, data)
            import torch

            torch.set_num_threads(threads)
            torch.set_num_interop_threads(threads)
            call, to_numpy = fn, lambda g: [np.asarray(x.detach().numpy(), np.float64).ravel() for x in g]
        else:
            import jax

            jax.config.update("jax_enable_x64", name == REFERENCE)
            jfn, args = jax_contender(name, problem, T, data, "float64" if name == REFERENCE else "float32")

            def call():
                return jax.block_until_ready(jfn(*args))

            def to_numpy(g):
                if not isinstance(g, dict):  # plain training: the validation loss, no hypergradient
                    return None
                return [np.asarray(g[k], np.float64).ravel() for k in HPARAMS[problem]]
    except Unavailable as e:
        return {"status": "unavailable", "reason": str(e)}
    base = vmhwm()
    start = time.perf_counter()
    out = call()
    first = time.perf_counter() - start
    peak = vmhwm()  # compilation included
    result = {"status": "ok", "first_s": first}
    if timed:
        can_reset = reset_peak()
        times = []
        while len(times) < (5 if times and times[0] < 2.0 else 3):  # ≥ 3 timed calls, 5 when they are short
            start = time.perf_counter()
            out = call()
            times.append(time.perf_counter() - start)
        median = float(np.median(times))
        result.update(compile_s=max(first - median, 0.0), median_s=median, times_s=times)
        if can_reset:  # the timed calls alone: what running (not compiling) holds at its peak
            result["run_peak_mib"] = (vmhwm() - base) / 2**20
        peak = max(peak, vmhwm())
    else:
        result["reason"] = "one call only (memory and hypergradient; no timing)"
    result.update(peak_mib=(peak - base) / 2**20, abs_peak_mib=peak / 2**20)
    if CONTENDERS.get(name, ("jax",))[0] == "jax" and jax.default_backend() != "cpu":
        # On an accelerator the arrays live in device memory: report its peak instead of the host's.
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            device_peak = stats["peak_bytes_in_use"] / 2**20
            result.update(peak_mib=device_peak, abs_peak_mib=device_peak, run_peak_mib=None)
    grads = to_numpy(out)
    result["grads"] = None if grads is None else [g.tolist() for g in grads]
    return result


def run_point(name: str, problem: str, T: int, data_path: str, threads: int, timed: bool, timeout: float) -> dict:
    env = {**os.environ, **thread_settings(threads)}
    cmd = [sys.executable, __file__, "--one", name, problem, str(T), data_path, str(threads), str(int(timed))]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s", "wall_s": timeout}
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"status": "failed", "reason": " | ".join(tail), "wall_s": wall}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


# ----- back to back in one process: time ratios that the machine's load shifts less ------------------------------


def run_interleaved(problem: str, T: int, data_path: str, names: list[str], rounds: int) -> dict:
    """Every JAX contender of ``names`` compiled in this process, then ``rounds`` rounds timing each once (the order
    rotating from round to round); per contender, the median over rounds of its time ÷ the baseline's in the same
    round, and XLA's compiled temporary memory ÷ the baseline's (exact)."""
    import jax

    data = np.load(data_path)
    names = [n for n in names if CONTENDERS[n][0] == "jax" and problem in CONTENDERS[n][1]]
    if BASELINE not in names:
        names = [BASELINE, *names]
    fns, temp = {}, {}
    for name in names:
        fn, args = jax_contender(name, problem, T, data)
        compiled = jax.jit(fn).lower(*args).compile()
        temp[name] = compiled.memory_analysis().temp_size_in_bytes
        fns[name] = (compiled, args)
        jax.block_until_ready(compiled(*args))  # warm-up
    # Wall time, and this process's CPU time (all its threads): with one XLA thread per contender the CPU time is
    # the work done, which other processes on a shared machine inflate far less than the wall time.
    times, cpu = {name: [] for name in names}, {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            compiled, args = fns[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled(*args))
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    base, base_cpu = np.asarray(times[BASELINE]), np.asarray(cpu[BASELINE])
    return {
        name: {
            "time_ratio": float(np.median(np.asarray(times[name]) / base)),
            "cpu_ratio": float(np.median(np.asarray(cpu[name]) / base_cpu)),
            "median_s": float(np.median(times[name])),
            "median_cpu_s": float(np.median(cpu[name])),
            "temp_mib": temp[name] / 2**20,
            "temp_ratio": temp[name] / temp[BASELINE],
        }
        for name in names
    }


def interleaved(args, data_path: str) -> None:
    for problem in args.problems:
        for T in args.T:
            cmd = [sys.executable, __file__, "--one-interleaved", problem, str(T), data_path, str(args.rounds)]
            env = {**os.environ, **thread_settings(args.threads)}
            proc = subprocess.run([*cmd, *args.contenders], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"  {problem} T={T}: failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{problem} T={T}, {args.rounds} rounds back to back (ratios to {BASELINE}, median over rounds):")
            for name, row in out.items():
                print(
                    f"  {name:40s} wall {row['time_ratio']:5.2f} ({row['median_s'] * 1e3:8.1f} ms)  CPU "
                    f"{row['cpu_ratio']:5.2f} ({row['median_cpu_s'] * 1e3:8.1f} ms)   XLA temp "
                    f"{row['temp_mib']:9.2f} MiB = {row['temp_ratio']:5.2f}",
                    flush=True,
                )


# ----- the parent: every point, compared with the reference -------------------------------------------------


def max_rel_diff(grads, ref) -> float:
    """Largest over hyperparameter groups of ``‖g − g_ref‖_∞ / ‖g_ref‖_∞``."""
    out = 0.0
    for g, r in zip(grads, ref, strict=True):
        g, r = np.asarray(g), np.asarray(r)
        out = max(out, float(np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-300)))
    return out


def plan(name: str, problem: str, T: int, previous: dict, max_point_s: float) -> tuple[str, str]:
    """``("timed" | "once" | "skip", reason)`` for one point, predicted from the same contender at the previous T
    (cost linear in T): timed if 3-5 timed calls fit in ``max_point_s``, else one call for memory and the
    hypergradient if that fits, else skipped."""
    if problem not in CONTENDERS[name][1]:
        return "skip", MANY_DIRECTIONS
    if name not in previous:
        return "timed", ""
    T_prev, prev = previous[name]
    if prev["status"] in ("unavailable", "skipped"):  # a smaller T was already out of reach: same reason
        return "skip", prev["reason"]
    if prev["status"] != "ok":
        return "skip", f"{prev['status']} at T={T_prev}"
    compile_s = prev.get("compile_s", 0.0)
    per_call = prev.get("median_s", prev["first_s"]) * T / T_prev
    timed = compile_s + (1 + (5 if per_call < 2.0 else 3)) * per_call + 5.0  # + process start-up
    once = compile_s + per_call + 5.0
    why = f"predicted {timed:.0f} s with timing (from {per_call * T_prev / T:.2f} s/call at T={T_prev})"
    if timed <= max_point_s:
        return "timed", ""
    if once <= max_point_s:
        return "once", f"{why} > --max-point-s {max_point_s:.0f}: one call only, for memory and the hypergradient"
    return "skip", f"{why}, {once:.0f} s for a single call > --max-point-s {max_point_s:.0f}"


def run_all(args, data_path: str) -> list[dict]:
    rows = []
    for problem in args.problems:
        previous: dict[str, tuple[int, dict]] = {}
        for T in args.T:
            plans = {name: plan(name, problem, T, previous, args.max_point_s) for name in args.contenders}
            ref_grads = None
            if any(mode != "skip" for name, (mode, _) in plans.items() if name != "jax training (no gradient)"):
                ref = run_point(REFERENCE, problem, T, data_path, args.threads, False, args.timeout)
                ref_grads = ref.get("grads")
                rows.append(_row(REFERENCE, problem, T, ref, None))
                _print_row(rows[-1])
            for name, (mode, reason) in plans.items():
                if mode == "skip":
                    result = {"status": "skipped", "reason": reason}
                else:
                    result = run_point(name, problem, T, data_path, args.threads, mode == "timed", args.timeout)
                    result["reason"] = reason or result.get("reason", "")
                previous[name] = (T, result)
                rows.append(_row(name, problem, T, result, ref_grads))
                _print_row(rows[-1])
    return rows


def _row(name, problem, T, result, ref_grads) -> dict:
    row = {"problem": problem, "T": T, "contender": name, "status": result["status"]}
    for key in ("compile_s", "median_s", "first_s", "peak_mib", "run_peak_mib", "abs_peak_mib", "wall_s"):
        row[key] = result.get(key, math.nan)
    grads = result.get("grads")
    row["max_rel_diff"] = max_rel_diff(grads, ref_grads) if grads is not None and ref_grads is not None else math.nan
    row["reason"] = result.get("reason", "")
    return row


def _fmt(x, spec, scale=1.0) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x * scale, spec)


def _print_row(row) -> None:
    head = f"  {row['problem']:6s} T={row['T']:<5d} {row['contender']:38s}"
    if row["status"] != "ok":
        print(f"{head} {row['status']}: {row['reason']}", flush=True)
        return
    timing = (
        f"first call {row['first_s']:7.2f} s (not timed)"
        if math.isnan(row["median_s"])
        else f"compile {row['compile_s']:6.2f} s  median {row['median_s'] * 1e3:8.1f} ms"
    )
    print(
        f"{head} {timing}  peak +{row['peak_mib']:7.1f} MiB (run +{_fmt(row['run_peak_mib'], '.1f')}, "
        f"{row['abs_peak_mib']:.0f} abs)  rel.diff {_fmt(row['max_rel_diff'], '.1e')}",
        flush=True,
    )


def table(rows) -> str:
    """The figures with ratios to ``jax.grad`` through ``lax.scan`` (same problem and T), as a Markdown table."""
    import pandas as pd

    df = pd.DataFrame(rows)
    base = df[(df.contender == BASELINE) & (df.status == "ok")].set_index(["problem", "T"])
    lines = [
        "| problem | T | contender | compile s | median ms | time / jax.grad | peak MiB (abs) | peak / jax.grad "
        "| run peak MiB | max rel. diff | note |",
        "|" + "---|" * 11,
    ]
    for r in df.itertuples():
        if r.status != "ok":
            lines.append(f"| {r.problem} | {r.T} | {r.contender} | | | | | | | | {r.status}: {r.reason} |")
            continue
        b = base.loc[(r.problem, r.T)] if (r.problem, r.T) in base.index else None
        t_ratio = _fmt(r.median_s / b["median_s"], ".2f") if b is not None else "—"
        m_ratio = _fmt(r.peak_mib / b["peak_mib"], ".2f") if b is not None else "—"
        diff = "reference" if r.contender == REFERENCE else _fmt(r.max_rel_diff, ".1e")
        note = r.reason if not math.isnan(r.median_s) else f"first call {r.first_s:.1f} s; {r.reason}"
        lines.append(
            f"| {r.problem} | {r.T} | {r.contender} | {_fmt(r.compile_s, '.2f')} | {_fmt(r.median_s, '.1f', 1e3)} "
            f"| {t_ratio} | {r.peak_mib:.1f} ({r.abs_peak_mib:.0f}) | {m_ratio} | {_fmt(r.run_peak_mib, '.1f')} "
            f"| {diff} | {note} |"
        )
    return "\n".join(lines)


def versions() -> str:
    import importlib.metadata as md

    parts = [f"python {sys.version.split()[0]}"]
    for pkg in ("jax", "jaxlib", "hgkit", "torch", "higher", "torchopt"):
        try:
            parts.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            parts.append(f"{pkg} absent")
    return ", ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="T = 100 only (smoke test)")
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS))
    parser.add_argument("--T", nargs="+", type=int, default=None, help=f"default {T_VALUES}")
    parser.add_argument("--contenders", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS))
    parser.add_argument("--out", help="write the rows as .csv or .json")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for XLA and PyTorch (default 1)")
    parser.add_argument("--max-point-s", type=float, default=180.0, help="skip points predicted to take longer")
    parser.add_argument("--timeout", type=float, default=400.0, help="kill a point after this many seconds")
    parser.add_argument(
        "--interleaved",
        action="store_true",
        help="JAX contenders only, all in one process per (problem, T), timed back to back in rotating rounds",
    )
    parser.add_argument("--rounds", type=int, default=7, help="rounds of --interleaved (default 7)")
    parser.add_argument(
        "--one", nargs=6, metavar=("NAME", "PROBLEM", "T", "DATA", "THREADS", "TIMED"), help=argparse.SUPPRESS
    )
    parser.add_argument("--one-interleaved", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        name, problem, T, data_path, threads, timed = args.one
        print(json.dumps(run_one(name, problem, int(T), data_path, int(threads), timed == "1")))
        return None
    if args.one_interleaved:
        problem, T, data_path, rounds, *names = args.one_interleaved
        print(json.dumps(run_interleaved(problem, int(T), data_path, names, int(rounds))))
        return None
    if args.threads < 1:
        parser.error(f"--threads must be ≥ 1; got {args.threads}")
    args.T = sorted(args.T or ([100] if args.quick else list(T_VALUES)))
    if args.T[0] < 1:
        parser.error(f"--T values must be positive; got {args.T}")

    print(f"{versions()}; {os.cpu_count()} CPUs visible")
    env = thread_settings(args.threads)
    print(
        f"threads: torch.set_num_threads({args.threads}), set_num_interop_threads({args.threads}); "
        + ", ".join(f"{k}={v!r}" for k, v in env.items())
    )
    start = time.perf_counter()
    if args.interleaved:
        with tempfile.TemporaryDirectory() as tmp:
            data_path = str(Path(tmp) / "data.npz")
            write_data(Path(data_path))
            interleaved(args, data_path)
        print(f"\ntotal {time.perf_counter() - start:.0f} s")
        return None
    print(f"float32 contenders; reference: {REFERENCE}; one fresh process per point; T = {args.T}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = str(Path(tmp) / "data.npz")
        write_data(Path(data_path))
        rows = run_all(args, data_path)
    print()
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.out:
        import pandas as pd

        df = pd.DataFrame(rows)
        if args.out.endswith(".json"):
            df.to_json(args.out, orient="records", indent=1)
        else:
            df.to_csv(args.out, index=False)
    return rows


if __name__ == "__main__":
    main()
