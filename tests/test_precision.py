"""hgkit's compiled computations run at the problem's ``matmul_precision`` ("highest" by default).

JAX fixes the precision of a float32 matrix product when it lowers a program, so the checks read the programs
hgkit lowers (written out by JAX's ``jax_dump_ir_to``) and the precision on their ``stablehlo.dot_general``. On CPU
both precisions compute the same numbers: the programs, not the values, are what differ.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hgkit as hg
from hgkit.problem import precision

T = 5
HP = {"wd": jnp.asarray(0.01, jnp.float32)}
_rng = np.random.default_rng(0)
X = jnp.asarray(_rng.normal(size=(8, 3)), jnp.float32)
BATCH = (X, X @ jnp.asarray(_rng.normal(size=(3, 2)), jnp.float32))


def make_problem(**kw) -> hg.BilevelProblem:
    """A float32 linear regression whose losses compute ``x @ W``; a new one per test (new functions), so that its
    programs are compiled, and dumped, in that test."""

    def mse(W, hp, batch):
        x, y = batch
        return jnp.mean((x @ W - y) ** 2)

    return hg.BilevelProblem(
        init=lambda hp, key: jnp.zeros((3, 2), jnp.float32),
        train_loss=lambda W, hp, b: mse(W, hp, b) + hp["wd"] * jnp.sum(W**2),
        val_loss=mse,
        optimizer=hg.optim.sgd(0.1),
        **kw,
    )


def dot_precisions(text: str) -> set[str]:
    """The precisions of the matrix products of a lowered program (``precision = [HIGHEST, HIGHEST]``)."""
    found = re.findall(r"stablehlo\.dot_general .*precision = \[(\w+), (\w+)\]", text)
    assert found, "the program has no matrix product"
    return {p for pair in found for p in pair}


@pytest.fixture
def lowered(tmp_path):
    """``programs(name)``: the texts of the programs JAX lowered during the test whose jit name contains ``name``."""
    before = jax.config.values["jax_dump_ir_to"]
    jax.config.update("jax_dump_ir_to", str(tmp_path))

    def programs(name: str) -> list[str]:
        return [p.read_text() for p in sorted(tmp_path.glob(f"*{name}*.mlir"))]

    try:
        yield programs
    finally:
        jax.config.update("jax_dump_ir_to", before)


@pytest.mark.parametrize(("setting", "expected"), [("highest", "HIGHEST"), (None, "DEFAULT")])
def test_hypergradient_lowers_at_the_problem_precision(lowered, setting, expected):
    """hg.hypergradient's program has the problem's precision on its products ("highest" by default, JAX's own
    default for None), as the pure form lowered under the same context, with bit-identical results."""
    problem = make_problem() if setting == "highest" else make_problem(matmul_precision=setting)
    assert problem.matmul_precision == setting
    value, grads = hg.hypergradient(problem, HP, T, BATCH, BATCH)
    (program,) = lowered("_compiled")
    assert dot_precisions(program) == {expected}

    pure = jax.jit(lambda hp: hg.hypergradient_result(problem, hp, T, BATCH, BATCH))
    with precision(problem):
        assert dot_precisions(pure.lower(HP).as_text()) == {expected}
        result = pure(HP)
    assert np.array_equal(result.value, value) and np.array_equal(result.grads["wd"], grads["wd"])


class OnStart:
    """A callback that keeps the RunInfo the loop announces."""

    def on_start(self, info):
        self.info = info


@pytest.mark.parametrize(
    ("method", "population", "name"),
    [(None, None, "hyper_step"), (hg.RealTime(delta=1), None, "hyper_step"), (None, 2, "population_step")],
    ids=["reverse", "realtime", "population"],
)
def test_loop_step_lowers_at_highest_by_default_and_records_it(lowered, method, population, name):
    """Every kind of the loop's compiled step (restarting, online, population) is lowered at HIGHEST, once for
    all hyper-iterations, and the run records the precision in its RunInfo and history."""
    problem = make_problem()
    hp = HP if population is None else {"wd": jnp.full(population, 0.01, jnp.float32)}
    heard = OnStart()
    result = hg.HyperOptimizer(problem, method=method, hyper_optimizer=optax.sgd(0.1)).run(
        hp, None if method else 3, T, BATCH, BATCH, population=population, progress=False, callbacks=[heard]
    )
    (program,) = lowered(name)  # one compilation for every hyper-iteration
    assert dot_precisions(program) == {"HIGHEST"}
    assert heard.info.matmul_precision == "highest"
    assert result.history.attrs["matmul_precision"] == "highest"
    assert hg.RunInfo.of(result.history).matmul_precision == "highest"


def test_loop_step_keeps_jax_default_for_none(lowered):
    problem = make_problem(matmul_precision=None)
    result = hg.HyperOptimizer(problem, hyper_optimizer=optax.sgd(0.1)).run(HP, 2, T, BATCH, BATCH, progress=False)
    (program,) = lowered("hyper_step")
    assert dot_precisions(program) == {"DEFAULT"}
    assert result.history.attrs["matmul_precision"] is None


def test_a_bad_precision_is_refused_by_name_when_the_problem_is_made():
    with pytest.raises(ValueError, match="matmul_precision must be None .* got 'fastest'"):
        make_problem(matmul_precision="fastest")
