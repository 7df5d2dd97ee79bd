"""How much the processor's instruction set moves a real-time run: the same program, compiled by XLA:CPU for this
machine's instruction set and for a narrower one (``--xla_cpu_max_isa``), each in a fresh process.

Why it matters: ``hgkit reproduce real-time``'s default ended with a HyperDivergenceError at chunk 33 on another
2-core machine ("Intel Xeon", the same jax/jaxlib/numpy/optax versions) and ran through on this one ("AMD EPYC").
XLA:CPU compiles for the host's instruction set, which changes vector widths, fused multiply-adds and the order of
reductions, so the last bits of every step differ between processors; RTHO at the edge of stability amplifies
them. This script shows the mechanism on the experiment's smoke setting; it cannot run the other machine's
processor. (The loop's ``restart_above`` guard, on by default in the experiment, makes the run survive either way.)

Printed: per instruction-set cap, whether RTHO's hyperparameter trajectory (η, μ, wd and ‖∇f‖ at every chunk) is
bit-identical to the uncapped run's, the largest relative difference and the first chunk that differs.

Run: ``python benchmarks/isa_sensitivity.py`` (about a minute on 2 cores); ``--caps`` to choose the caps.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# Benchmark the checkout this file sits in (not whichever hgkit the interpreter has installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def trajectory(out: str) -> None:
    """One run of the real-time smoke setting (T = 400, Δ = 20); saves RTHO's trajectory to ``out``."""
    from hgkit.experiments import realtime_tuning as rt

    config = dataclasses.replace(rt.SMOKE, T=400, delta=20)
    history = rt.run(config, progress=False).rtho.history
    np.save(out, history[["lr", "mu", "wd", "grad_norm"]].to_numpy())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", nargs="+", default=["AVX2", "SSE4_2"], help="values of --xla_cpu_max_isa")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return trajectory(args.one)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for cap in [None, *args.caps]:
            env = dict(os.environ)
            if cap is not None:
                env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_max_isa={cap}".strip()
            out = os.path.join(tmp, f"{cap}.npy")
            subprocess.run([sys.executable, __file__, "--one", out], env=env, check=True, capture_output=True)
            runs[cap] = np.load(out)
        base = runs.pop(None)
        print(f"RTHO on the real-time smoke setting, {len(base)} chunks; against this machine's own instruction set:")
        for cap, run in runs.items():
            differ = np.flatnonzero((run != base).any(axis=1))
            worst = float(np.nanmax(np.abs(run - base) / np.abs(base)))
            first = f"first differing chunk {differ[0]}" if len(differ) else "identical"
            same = not len(differ)
            print(f"  --xla_cpu_max_isa={cap:7s} bit-identical: {same!s:5s}  max rel diff {worst:.2e}  {first}")


if __name__ == "__main__":
    main()
