"""Reverse mode's stores (``hg.Residuals``, ``hg.States``, ``hg.Segments``, ``hg.Binomial``, and one written here)
give the hypergradient of ``hg.Reverse(store=hg.States())`` (float64, 1e-10), revolve's schedules are optimal, and
``hg.Reverse.within`` plans on the host a method that compiles within its budget, nothing compiling while a caller's
function is traced."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import finite_differences, mlp, mlp_init, rel_err, toy_data, tree_l2

import hgkit as hg
from hgkit.hypergrad import checkpointing, planner

X, Y = toy_data(n=16)
XV, YV = toy_data(n=10, seed=3)
W0 = mlp_init()
T = 13


def minibatch(t):
    idx = (jnp.arange(8) + 3 * t) % 16  # a different half of the data at each step
    return X[idx], Y[idx]


def err(w, hp, b):
    return jnp.mean((mlp(w, b[0]) - b[1]) ** 2)


# Initial weights that depend on λ ("scale"), so the p_0 ∂S_0/∂λ term of reverse mode counts.
PROBLEM = hg.BilevelProblem(
    init=lambda hp, key: jax.tree_util.tree_map(lambda w: w * (1 + 0.1 * hp["scale"]), W0),
    train_loss=lambda w, hp, b: err(w, hp, b) + jnp.exp(hp["log_wd"]) * tree_l2(w),
    val_loss=err,
    optimizer=hg.optim.momentum("lr", "mu"),
)
HP = {"lr": jnp.asarray(0.2), "mu": jnp.asarray(0.6), "log_wd": jnp.asarray(-3.0), "scale": jnp.asarray(0.5)}


# Every option beside its reference. All the runs whose values the file checks are compiled as one program (one
# compilation, with XLA's backend optimizations off: these programs are checked for their values, not their speed);
# the planner's tests compile with the default options, as its memory figures are the compiled program's.
K = 5


@dataclasses.dataclass(frozen=True)
class Unrolled(hg.Store):
    """A store of a user's own, from the public pieces only: every state kept in a Python list (n small)."""

    def reverse(self, steps, s0, first, n):
        states, losses, state, bad = [], [], s0, steps.diverged_at
        for t in range(first, first + n):
            states.append(state)
            state, loss = steps.forward(state, t)
            losses.append(loss)
            bad = steps.first_nonfinite(bad, state, t)
        adjoint = steps.terminal(state)
        for t in reversed(range(first, first + n)):
            adjoint = steps.backward(states[t - first], t, adjoint)
        return hg.Reversal(state, jnp.stack(losses), bad, adjoint)


STATES = hg.Reverse(store=hg.States())  # the reference
OPTIONS = {
    STATES: [
        hg.Reverse(),
        hg.Reverse(store=hg.Residuals()),
        hg.Reverse(store=hg.Residuals(), hvp="forward-over-reverse"),
        hg.Reverse(store=hg.Segments("sqrt")),
        hg.Reverse(store=hg.Segments(5), hvp="forward-over-reverse"),
        hg.Reverse(store=hg.Binomial(1)),
        hg.Reverse(store=hg.Binomial(3), hvp="forward-over-reverse"),
        hg.Reverse(store=Unrolled()),
    ],
    hg.Reverse(store=hg.States(), truncate=K): [
        hg.Reverse(store=hg.Residuals(), truncate=K),
        hg.Reverse(store=hg.Segments(2), truncate=K),
        hg.Reverse(store=hg.Binomial(2), truncate=K),
        hg.Reverse(store=Unrolled(), truncate=K),
    ],
}
FEW_OPTIMIZATIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# Two objectives: the optimizer's hyperparameters follow the training error, the others the validation error.
BOTH = hg.BilevelProblem(
    PROBLEM.init, PROBLEM.train_loss, {"val": err, "train": err}, PROBLEM.optimizer,
    follows={"lr": "train", "mu": "train", "log_wd": "val", "scale": "val"},
)  # fmt: skip
POPULATION = {k: jnp.stack([v, v * 1.2, v * 0.7]) for k, v in HP.items()}  # three members


def non_finite_problem(k: int):
    """At step k the train loss gains |w − c|^1.5 with c = the weights there: its gradient is 0 (the run stays
    finite) and its curvature is not finite, so the derivative carried back goes non-finite at step k."""
    w = jnp.zeros(2)
    for _ in range(k):
        w = w - 0.1 * 2 * (w - 1.0)
    c = w
    return hg.BilevelProblem(
        init=lambda hp, key: jnp.zeros(2),
        train_loss=lambda w, hp, on: jnp.sum((w - 1.0) ** 2) * hp["a"] + on * jnp.sum(jnp.abs(w - c) ** 1.5),
        val_loss=lambda w, hp, b: jnp.sum(w**2),
        optimizer=hg.optim.sgd("lr"),
    )


NON_FINITE_AT, NON_FINITE_T = 6, 10
# Two settings: one whose derivative goes non-finite at step 6, one whose training overflows at step 0.
NON_FINITE_HP = {"a": jnp.asarray([1.0, 1e200]), "lr": jnp.asarray([0.1, 1e200])}


@functools.cache
def population_method() -> hg.Reverse:
    """Planned on the host for one member, with too little for √T: binomial checkpointing with 3 slots."""
    budget = plan(hg.Reverse(store=hg.Binomial(3)), T).predicted_bytes
    return hg.Reverse.within(budget, PROBLEM, HP, T, minibatch, (XV, YV))


def families() -> dict:
    """name -> (methods, function of the inputs below giving one result per method)."""
    methods = [m for ref, options in OPTIONS.items() for m in (ref, *options)]
    val, both_val = (XV, YV), {"val": (XV, YV), "train": (X, Y)}
    objectives = (STATES, hg.Reverse(store=hg.Residuals()), hg.Reverse(store=hg.Binomial(4)),
                  hg.Reverse(store=hg.Segments(4)))  # fmt: skip
    population = (STATES, hg.Reverse(store=hg.Residuals()), population_method())
    bad = non_finite_problem(NON_FINITE_AT)
    non_finite = (STATES, hg.Reverse(store=hg.Residuals()), hg.Reverse(store=hg.Binomial(2)),
                  hg.Reverse(store=hg.Segments(3)), hg.Reverse(store=Unrolled()))  # fmt: skip

    def batch(t):
        return jnp.where(t == NON_FINITE_AT, 1.0, 0.0)

    def each(problem, methods, val, T=T, train=minibatch):
        return lambda h: [hg.hypergradient_result(problem, h, T, train, val, method=m) for m in methods]

    return {
        "options": (methods, lambda a: each(PROBLEM, methods, val)(a["hp"])),
        "objectives": (objectives, lambda a: [r.grads for r in each(BOTH, objectives, both_val)(a["hp"])]),
        "population": (population, lambda a: [r.grads for r in jax.vmap(each(PROBLEM, population, val))(a["pop"])]),
        "non_finite": (
            non_finite,
            lambda a: [
                (r.failure, r.failed_at)
                for r in jax.vmap(each(bad, non_finite, None, NON_FINITE_T, batch))(a["non_finite"])
            ],
        ),
    }


@functools.cache
def all_results() -> dict:
    """family -> {method: its output}, from one compiled program."""
    fams = families()
    inputs = {"hp": HP, "pop": POPULATION, "non_finite": NON_FINITE_HP}
    program = jax.jit(lambda a: {name: fn(a) for name, (_, fn) in fams.items()})
    out = program.lower(inputs).compile(compiler_options=FEW_OPTIMIZATIONS)(inputs)
    return {name: dict(zip(methods, out[name], strict=True)) for name, (methods, _) in fams.items()}


def results() -> dict:
    return all_results()["options"]


def assert_same_run(res, ref, tol=1e-10):
    assert rel_err(res.grads, ref.grads) < tol
    np.testing.assert_allclose(res.train_losses, ref.train_losses, rtol=1e-13)
    assert rel_err(res.state, ref.state) < 1e-13
    assert float(res.value) == pytest.approx(float(ref.value), rel=1e-13)
    assert (int(res.failure), int(res.failed_at)) == (int(ref.failure), int(ref.failed_at))


# ----- the schedule --------------------------------------------------------------------------------------------


def simulate(sched: checkpointing.Schedule) -> list[tuple[str, int]]:
    """Run a schedule on step numbers instead of states, checking it: every reversal finds the state before its
    step current, steps are reversed from n − 1 down to 0, only allotted slots are used. Returns the stores and
    reversals in order."""
    stored, log = {0: 0}, []

    def move(cur, first, count, slot):
        assert first == cur and count > 0, (first, cur, count)
        if slot >= 0:
            assert 0 < slot < sched.slots, slot
            stored[slot] = cur + count
            log.append(("snapshot", slot))
        return cur + count

    cur = 0
    for row in sched.moves[: sched.sweep].tolist():
        cur = move(cur, *row)
    assert cur == sched.n - 1, (cur, sched.n)
    for i, (restore, lo, hi, t) in enumerate(sched.turns.tolist()):
        assert (restore < 0) == (i == 0) and (i > 0 or lo == hi == sched.sweep), (i, restore, lo, hi)
        cur = stored[restore] if restore >= 0 else cur
        for row in sched.moves[lo:hi].tolist():
            cur = move(cur, *row)
        assert cur == t, (cur, t)
        log.append(("reverse", t))
    assert [v for a, v in log if a == "reverse"] == list(range(sched.n - 1, -1, -1)), log
    return log


@functools.cache
def least_forward_steps(n: int, free: int) -> int:
    """Exhaustive dynamic programme: the fewest plain steps reversing n steps from a stored state with ``free``
    more slots (store the state at m, reverse the right part with one slot fewer, then the left part)."""
    if n == 1:
        return 0
    costs = [
        m + (0 if n - m == 1 else least_forward_steps(n - m, free - 1)) + least_forward_steps(m, free)
        for m in range(1, n)
        if n - m == 1 or free > 0
    ]
    return min(costs)


def test_forward_steps_is_revolves_bound_and_the_schedules_attain_it():
    for n in range(1, 41):
        for slots in range(1, 8):
            best = least_forward_steps(n, slots - 1)
            assert checkpointing.forward_steps(n, slots) == best, (n, slots)
            sched = checkpointing.schedule(n, slots)
            log = simulate(sched)  # every reversal from the right state, in order, within the slots
            assert sched.forward_steps == best and sched.slots <= slots
            assert sum(1 for action, _ in log if action == "reverse") == n
    # The closed form at the sizes of the benchmarks; s ≥ n stores every state (n − 1 steps), s = 1 restarts.
    assert checkpointing.forward_steps(10_000, 32) == 4 * 10_000 - math.comb(36, 33) == 32_860
    assert checkpointing.forward_steps(50, 50) == checkpointing.forward_steps(50, 80) == 49
    assert checkpointing.forward_steps(50, 1) == 50 * 49 // 2
    big = checkpointing.schedule(10_000, 32)
    simulate(big)
    assert big.forward_steps == 32_860 and big.slots == 32


def test_executor_reverses_a_scalar_recurrence_for_any_slots():
    # s_{t+1} = sin(a s_t) + 0.1 t: the executor's adjoint against jax.grad of the unrolled recurrence.
    cases = [(1, 1), (2, 1), (7, 2), (9, 20), (30, 4)]  # s ≥ n stores every state

    def phi(s, a, t):
        return jnp.sin(a * s) + 0.1 * t

    def final(a, n):
        return jax.lax.fori_loop(0, n, lambda t, s: phi(s, a, t), 0.3)

    def hypergradient(a, n, slots):
        def step(s, t):
            return phi(s, a, t), s

        def back(s, t, g):
            _, vjp = jax.vjp(lambda s, a: phi(s, a, t), s, a)
            ds, da = vjp(g[0])
            return ds, g[1] + da

        out = checkpointing.execute(checkpointing.schedule(n, slots), 0.3, 0, step, lambda s: (1.0, 0.0), back)
        return out.state, out.adjoint[1], out.losses, final(a, n), jax.grad(final)(a, n)

    # All cases in one program: one compilation.
    program = jax.jit(lambda a: [hypergradient(a, n, slots) for n, slots in cases])
    for (n, slots), (state, grad, losses, ref_state, ref_grad) in zip(cases, program(0.9), strict=True):
        assert float(state) == pytest.approx(float(ref_state), rel=1e-14)
        assert float(grad) == pytest.approx(float(ref_grad), rel=1e-12), (n, slots)
        assert losses.shape == (n,) and float(losses[0]) == 0.3  # the "loss" here is the state before each step


# ----- every option gives Reverse()'s hypergradient ----------------------------------------------------------------


def test_every_store_agrees_with_states():
    for ref, options in OPTIONS.items():
        for method in options:
            try:
                assert_same_run(results()[method], results()[ref])
            except AssertionError as e:
                raise AssertionError(f"{method.label}: {e}") from None
    truncated, full = results()[hg.Reverse(store=hg.States(), truncate=K)], results()[STATES]
    assert float(truncated.grads["scale"]) == 0.0  # truncation drops the initial weights' dependence
    assert rel_err(truncated.grads, full.grads) > 1e-3  # and changes the hypergradient


def test_against_central_finite_differences():
    def f(hp):
        return hg.hypergradient_result(PROBLEM, hp, T, minibatch, (XV, YV), method=hg.Reverse(truncate=T)).value

    fd = finite_differences(jax.jit(f).lower(HP).compile(compiler_options=FEW_OPTIMIZATIONS), HP)
    for method in (hg.Reverse(store=hg.Residuals()), hg.Reverse(store=hg.Binomial(3), hvp="forward-over-reverse")):
        assert rel_err(results()[method].grads, fd) < 1e-6


def test_several_objectives():
    ref, *others = all_results()["objectives"].values()
    assert rel_err(ref, results()[STATES].grads) > 1e-3  # the two objectives differ
    for grads in others:
        assert rel_err(grads, ref) < 1e-10


def test_populations():
    assert population_method().store == hg.Binomial(3)  # planned once on the host, then vmapped as a value
    (_, ref), *others = all_results()["population"].items()
    for method, g in others:
        assert rel_err(g, ref) < 1e-10, method.label
    first = jax.tree_util.tree_map(lambda x: x[0], ref)  # the first member is HP itself
    assert rel_err(first, results()[STATES].grads) < 1e-12


def test_non_finite_training_and_derivative_are_reported_at_the_same_step():
    for method, (failure, failed_at) in all_results()["non_finite"].items():
        got = list(zip(np.asarray(failure).tolist(), np.asarray(failed_at).tolist(), strict=True))
        expected = [(hg.Failure.DERIVATIVE_NONFINITE, NON_FINITE_AT), (hg.Failure.TRAINING_NONFINITE, 0)]
        assert got == expected, method.label


def test_the_default_stores_residuals_only_when_they_are_small():
    # A linear model's step keeps little beside its state; an MLP's keeps its activations.
    linear = hg.BilevelProblem(
        init=lambda hp, key: jnp.zeros(3),
        train_loss=lambda w, hp, b: jnp.mean((b[0] @ w - b[1]) ** 2) + hp["wd"] * jnp.sum(w**2),
        val_loss=lambda w, hp, b: jnp.mean((b[0] @ w - b[1]) ** 2),
        optimizer=hg.optim.momentum("lr", 0.9),
    )
    hp = {"lr": jnp.asarray(0.1), "wd": jnp.asarray(0.01)}
    assert planner.default_store(linear, hp, (X, Y)) == hg.Residuals()
    assert planner.default_store(PROBLEM, HP, minibatch) == hg.States()
    assert plan(hg.Reverse(), T).store == hg.States()
    assert hg.Reverse().label == "reverse mode"


# ----- the planner ---------------------------------------------------------------------------------------------

LONG = 200  # a horizon where the plans differ

# A miniature of the softmax regression of benchmarks/peers.py (learning rate and example weights, momentum 0.9):
# one step's residuals take 1.1 training states, so keeping them pays.
XL = jnp.asarray(np.random.default_rng(5).normal(size=(16, 32)))
YL = jnp.asarray(np.random.default_rng(6).integers(0, 4, 16))


def nll(w, b):
    return -jnp.take_along_axis(jax.nn.log_softmax(b[0] @ w["W"] + w["b"]), b[1][:, None], axis=1)[:, 0]


LOGREG = hg.BilevelProblem(
    init=lambda hp, key: {"W": jnp.zeros((32, 4)), "b": jnp.zeros(4)},
    train_loss=lambda w, hp, b: jnp.mean(hp["ex_w"] * nll(w, b)),
    val_loss=lambda w, hp, b: jnp.mean(nll(w, b)),
    optimizer=hg.optim.momentum("lr", 0.9),
)
LOGREG_HP = {"lr": jnp.asarray(0.3), "ex_w": jnp.ones(16)}
ON_LOGREG = dict(problem=LOGREG, hp=LOGREG_HP, train=(XL, YL), val=(XL, YL))


def compiled_bytes(method, T=LONG, problem=PROBLEM, hp=HP, train=minibatch, val=(XV, YV)):
    """The hypergradient program's memory, as hgkit defines it (temporaries plus outputs)."""
    fn = jax.jit(lambda h: hg.hypergradient_result(problem, h, T, train, val, method=method))
    return planner.program_bytes(fn.lower(hp).compile())


def plan(method, T=LONG, problem=PROBLEM, hp=HP, train=minibatch, val=(XV, YV)):
    return hg.plan(method, problem, hp, T, train, val)


def within(budget, T=LONG, problem=PROBLEM, hp=HP, train=minibatch, val=(XV, YV)):
    return hg.Reverse.within(budget, problem, hp, T, train, val)


def test_within_picks_the_fastest_store_that_fits_and_it_compiles_within_budget():
    assert planner.default_store(LOGREG, LOGREG_HP, (XL, YL)) == hg.Residuals()
    fixed = [plan(hg.Reverse(store=s), **ON_LOGREG) for s in (hg.Residuals(), hg.States(), hg.Segments("sqrt"))]
    need = [p.predicted_bytes for p in fixed]
    assert need[0] > need[1] > need[2]  # residuals > states > √T here
    one = plan(hg.Reverse(store=hg.Binomial(1)), **ON_LOGREG)
    budgets = [need[0], need[1], need[2], (need[2] + one.predicted_bytes) // 2]
    chosen = [within(b, **ON_LOGREG) for b in budgets]
    assert [m.store for m in chosen[:3]] == [hg.Residuals(), hg.States(), hg.Segments("sqrt")]
    assert isinstance(chosen[3].store, hg.Binomial) and 1 < chosen[3].store.slots < 2 * math.sqrt(LONG)
    plans = [plan(m, **ON_LOGREG) for m in chosen]
    factors = [p.recompute_factor for p in plans]
    assert factors[:3] == [1.0, 2.0, 3.0] and factors[3] > 3.0
    for b, m, p in zip(budgets, chosen, plans, strict=True):
        assert p.predicted_bytes <= b
        compiled = compiled_bytes(m, **ON_LOGREG)
        assert compiled <= b, (p, compiled)
        # Conservative, and not wildly so (the margin's fixed part, two states, weighs most at this tiny size).
        assert compiled <= p.predicted_bytes < 1.3 * compiled
    assert "predicted" in str(plans[3]) and "Binomial" in str(plans[3])
    assert chosen[3].label == f"reverse mode (Binomial(slots={chosen[3].store.slots}))"  # what the loop records
    # Where a step's residuals are large (the MLP: 6.4 states), no budget buys them: Reverse() would not either.
    assert within(2**40).store == hg.States() == planner.default_store(PROBLEM, HP, minibatch)


def test_budget_below_every_plan_is_refused_naming_the_minimum():
    one = plan(hg.Reverse(store=hg.Binomial(1)))
    with pytest.raises(ValueError, match=rf"the least any needs is {one.predicted_bytes} bytes"):
        within(one.predicted_bytes - 1)
    assert within(one.predicted_bytes).store == hg.Binomial(1)
    with pytest.raises(ValueError, match=r"Reverse.within\(budget_bytes, ...\) must be a positive int"):
        within(2.5e6)


def test_nothing_compiles_while_a_callers_function_is_traced(caplog):
    method = within(plan(hg.Reverse(store=hg.Segments("sqrt"))).predicted_bytes)
    methods = (hg.Reverse(), method, hg.Reverse(store=hg.Binomial(3), truncate=50), hg.Reverse(store=Unrolled()))

    def grads(hp):
        return [hg.hypergradient_result(PROBLEM, hp, LONG, minibatch, (XV, YV), method=m).grads for m in methods]

    with caplog.at_level(logging.DEBUG, logger="jax"), jax.log_compiles(True):
        jax.make_jaxpr(grads)(HP)
        traced = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
        jax.jit(lambda x: x + 1).lower(1.0).compile()  # the log does show a compilation
        compiled = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
    assert traced == [] and len(compiled) > 0
    with pytest.raises(TypeError, match=r"outside, and pass the method it returns in"):
        jax.jit(lambda hp: within(10**7, hp=hp).store)(HP)


def test_old_keywords_name_their_replacement():
    for old, new in (
        ({"checkpoint": "sqrt"}, r"store=hg.Segments\(length='sqrt'\)"),
        ({"checkpoint": 4}, r"store=hg.Segments\(length=4\)"),
        ({"checkpoint": hg.Binomial(4)}, r"store=hg.Binomial\(slots=4\)"),
        ({"memory": 2**20}, r"hg.Reverse.within\(1048576, problem, hparams, T"),
        ({"store": "states"}, r"store=hg.States\(\)"),
        ({"store": "residuals"}, r"store=hg.Residuals\(\)"),
    ):
        with pytest.raises(TypeError, match=new):
            hg.Reverse(**old)


def test_options_are_validated():
    with pytest.raises(TypeError, match=r"Reverse\(store=...\) must be None"):
        hg.Reverse(store="activations")
    with pytest.raises(ValueError, match=r"Reverse\(truncate=...\)"):
        hg.Reverse(truncate=0)
    with pytest.raises(ValueError, match=r"Segments\(length=...\)"):
        hg.Segments("binomial")
    with pytest.raises(ValueError, match=r"Binomial\(slots=\.\.\.\)"):
        hg.Binomial(0)
    with pytest.raises(NotImplementedError, match="no cost model"):
        plan(hg.Reverse(store=Unrolled()))
    assert hash(hg.Reverse(store=hg.Binomial(4))) == hash(hg.Reverse(store=hg.Binomial(4)))
    assert hg.Reverse(store=hg.Binomial(8), truncate=3).label == "reverse mode (Binomial(slots=8), truncate=3)"


def test_the_loop_records_the_method_that_ran():
    import optax

    method = within(plan(STATES, T).predicted_bytes - 1, T=T)  # too little for every state
    opt = hg.HyperOptimizer(PROBLEM, method=method, hyper_optimizer=optax.sgd(1e-3))
    result = opt.run(HP, 1, T, minibatch, (XV, YV), progress=False)
    assert method.store == hg.Segments("sqrt")
    assert result.history.attrs["method"] == method.label == "reverse mode (Segments(length='sqrt'))"
