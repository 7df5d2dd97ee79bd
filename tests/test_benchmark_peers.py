"""benchmarks/peers.py: every hgkit contender computes the same hypergradient as plain ``jax.grad`` through
``lax.scan`` on the benchmark's own problems, and the PyTorch contenders report themselves unavailable (instead of
crashing) where torch is not installed. Figures (time, memory) are the script's business, not the tests'."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import QUICK_TO_COMPILE, rel_err

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"
spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
peers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peers)

T = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("peers") / "data.npz"
    peers.write_data(path)
    return str(path), np.load(path)


def hypergradients(names, problem, data, T=T):
    """Each contender's hypergradient, {name: grads}: their jitted functions called in one compiled program (one
    compilation of all of them takes far less time than one each)."""
    contenders = [peers.jax_contender(name, problem, T, data, "float64") for name in names]  # conftest enables x64
    fns = [fn for fn, _ in contenders]
    every = jax.jit(lambda args: [fn(*a) for fn, a in zip(fns, args, strict=True)], compiler_options=QUICK_TO_COMPILE)
    return dict(zip(names, jax.device_get(every([args for _, args in contenders])), strict=True))


@pytest.mark.parametrize("problem", peers.PROBLEMS)
def test_hgkit_contenders_agree_with_jax_grad(problem, data):
    _, arrays = data
    names = [
        name
        for name, (library, problems) in peers.CONTENDERS.items()
        if library == "jax" and problem in problems and name != "jax training (no gradient)"
    ]
    grads = hypergradients([peers.BASELINE, *names], problem, arrays)
    reference = grads[peers.BASELINE]
    assert set(reference) == set(peers.HPARAMS[problem])
    assert all(np.any(np.asarray(g) != 0) for g in reference.values())  # a comparison of zeros proves nothing
    checked = []
    for name in names:
        assert rel_err(grads[name], reference) < 1e-9, name
        checked.append(name)
    assert {"hgkit Reverse()", 'hgkit Reverse(store=Segments("sqrt"))'} <= set(checked)
    assert {"hgkit Reverse(store=States())", "hgkit Reverse(store=Residuals())"} <= set(checked)
    assert "hgkit Reverse(store=Binomial(32))" in checked
    if problem == "mlp":
        assert {"hgkit Forward()", "hgkit RealTime(delta=T)", "jax.jacfwd through lax.scan"} <= set(checked)


def test_torch_contenders_unavailable_without_torch(data, monkeypatch):
    path, _ = data
    monkeypatch.setitem(sys.modules, "torch", None)  # what an environment without torch looks like to `import`
    for name in ("higher (innerloop_ctx, SGD+momentum)", "torchopt (functional sgd)"):
        result = peers.run_one(name, "logreg", T, path, threads=1, timed=False)
        assert result["status"] == "unavailable" and "torch" in result["reason"], result


def test_script_end_to_end_in_fresh_processes(capsys):
    """The command line, quick: a subprocess per point, float32 against the float64 reference, the table."""
    rows = peers.main(
        [
            "--quick",
            "--T",
            "3",
            "--problems",
            "mlp",
            "--contenders",
            "hgkit Reverse()",
            "jax.grad through lax.scan",
            "higher (innerloop_ctx, SGD+momentum)",
        ]
    )
    by_name = {r["contender"]: r for r in rows}
    for name in ("hgkit Reverse()", "jax.grad through lax.scan"):
        row = by_name[name]
        assert row["status"] == "ok", row
        assert row["max_rel_diff"] < 1e-3  # float32 against float64
        assert row["median_s"] > 0 and row["peak_mib"] > 0
    assert by_name["higher (innerloop_ctx, SGD+momentum)"]["status"] in ("ok", "unavailable")
    out = capsys.readouterr().out
    assert "| mlp | 3 | hgkit Reverse() |" in out and "time / jax.grad" in out
