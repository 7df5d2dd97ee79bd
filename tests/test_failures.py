"""One failure vocabulary (hgkit/hypergrad/failures.py): classified in the computation, explained once, and the
same message from hg.hypergradient, the loop and populations; the inputs habits from other JAX libraries bring."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hgkit as hg

# A separable quadratic whose Hessian has eigenvalues (1 + e) spread over a decade: conjugate gradients needs
# several iterations, so one leaves a residual.
A = jnp.asarray([0.0, -1.0, 12.0, 18.0])
E = jnp.asarray([3.0, 1.1, 1.0, 0.1])
QUADRATIC = hg.BilevelProblem(
    init=lambda hp, key: jnp.zeros(4),
    train_loss=lambda w, hp, a: 0.5 * jnp.sum((w - a) ** 2) + 0.5 * jnp.sum(hp["lam"] * w**2),
    val_loss=lambda w, hp, b: jnp.sum((w - b) ** 2),
    optimizer=hg.optim.sgd(0.4),
)
UNCONVERGED = hg.Implicit(solver="cg", iterations=1, tol=1e-12)


def test_classify_orders_failures_most_fundamental_first():
    finite, nan = jnp.asarray(1.0), jnp.asarray(jnp.nan)
    cases = [
        ((3, 2, True, nan, nan), (hg.Failure.TRAINING_NONFINITE, 3)),
        ((-1, 2, True, nan, nan), (hg.Failure.DERIVATIVE_NONFINITE, 2)),
        ((-1, -1, True, nan, nan), (hg.Failure.SOLVE_NOT_CONVERGED, -1)),
        ((-1, -1, False, nan, nan), (hg.Failure.OBJECTIVE_NONFINITE, -1)),
        ((-1, -1, False, finite, nan), (hg.Failure.HYPERGRADIENT_NONFINITE, -1)),
        ((-1, -1, False, finite, finite), (hg.Failure.NONE, -1)),
    ]
    from hgkit.hypergrad.failures import classify

    for (bad, grad_bad, solve, value, grads), expected in cases:
        code, step = jax.jit(classify)(bad, grad_bad, solve, value, {"g": grads})
        assert (int(code), int(step)) == expected


def test_loop_and_hypergradient_say_the_same_about_an_unconverged_solve():
    # Defect: the loop had its own copy of the classification and said "the derivative ... went non-finite at
    # inner step 5" for a run of T = 5 steps. Both entry points now explain the failure with the same function.
    T, hp = 5, {"lam": E}
    with pytest.raises(hg.DivergenceError) as direct:
        hg.hypergradient(QUADRATIC, hp, T, A, A + 0.1, method=UNCONVERGED)
    opt = hg.HyperOptimizer(QUADRATIC, method=UNCONVERGED, hyper_optimizer=optax.sgd(0.01))
    with pytest.raises(hg.HyperDivergenceError) as looped:
        opt.run(hp, 3, T, A, A + 0.1, progress=False)
    for err in (direct.value, looped.value):
        assert err.failure == hg.Failure.SOLVE_NOT_CONVERGED and err.step is None
        assert re.search(r"linear solve .* did not converge: relative residual .* = \d", str(err))
        assert "inner step" not in str(err)
    assert str(direct.value) in str(looped.value)  # the loop adds where (hyper-iteration 0), not another story


def test_population_members_are_explained_by_the_same_function():
    T = 5
    hps = {"lam": jnp.stack([E, E])}
    opt = hg.HyperOptimizer(QUADRATIC, method=UNCONVERGED, hyper_optimizer=optax.sgd(0.01))
    with pytest.raises(hg.HyperDivergenceError, match="every member of the population diverged") as info:
        with pytest.warns(RuntimeWarning, match="population member 0: hyper-iteration 0 .* linear solve"):
            opt.run(hps, 2, T, A, A + 0.1, progress=False, population=2)
    assert "linear solve" in str(info.value) and info.value.failure == hg.Failure.SOLVE_NOT_CONVERGED
    results = jax.jit(jax.vmap(lambda h: hg.hypergradient_result(QUADRATIC, h, T, A, A + 0.1, method=UNCONVERGED)))(hps)
    with pytest.raises(hg.DivergenceError, match="population member 0: the implicit hypergradient's linear solve"):
        hg.raise_if_diverged(results, T, hps)


def test_jitting_hypergradient_points_to_the_pure_form():
    # Defect: jax.jit(lambda hp: hg.hypergradient(...)) ended in a raw TracerArrayConversionError.
    def f(hp):
        return hg.hypergradient(QUADRATIC, hp, 5, A, A)[1]

    for transform in (jax.jit, jax.vmap, jax.grad):
        with pytest.raises(TypeError, match=r"hg\.hypergradient_result") as info:
            if transform is jax.grad:
                jax.grad(lambda lam: f({"lam": lam})["lam"].sum())(E)
            else:
                transform(f)({"lam": E if transform is jax.jit else jnp.stack([E, E])})
        assert "on the host" in str(info.value)
    # ... and the pure form is what works there.
    grads = jax.jit(lambda hp: hg.hypergradient_result(QUADRATIC, hp, 5, A, A).grads)({"lam": E})
    np.testing.assert_allclose(grads["lam"], hg.hypergradient(QUADRATIC, {"lam": E}, 5, A, A)[1]["lam"], rtol=1e-12)


def test_optax_adam_without_eps_root_is_named_in_the_error():
    # A parameter that never gets a gradient ('unused') has a second moment of exactly 0; optax's Adam takes
    # sqrt(0) there, whose derivative is infinite, unless eps_root > 0.
    x = jnp.linspace(-1.0, 1.0, 8)[:, None]
    data = (x, 2 * x[:, 0])

    def make(transform):
        return hg.BilevelProblem(
            init=lambda hp, key: {"w": jnp.zeros(1), "unused": jnp.zeros(3)},
            train_loss=lambda p, hp, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2) + hp["wd"] * jnp.sum(p["w"] ** 2),
            val_loss=lambda p, hp, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2),
            optimizer=hg.optim.from_optax(transform, lr="lr"),
        )

    hp = {"lr": jnp.asarray(0.05), "wd": jnp.asarray(0.01)}
    for method in (hg.Reverse(), hg.Forward()):
        with pytest.raises(hg.DivergenceError, match="eps_root") as info:
            hg.hypergradient(make(lambda lr: optax.adam(lr)), hp, 5, data, data, method=method)
        assert info.value.failure == hg.Failure.DERIVATIVE_NONFINITE
        value, grads = hg.hypergradient(
            make(lambda lr: optax.adam(lr, eps_root=1e-16)), hp, 5, data, data, method=method
        )
        assert np.isfinite(grads["lr"]) and np.isfinite(grads["wd"])
    # A divergence that has nothing to do with Adam does not mention it.
    with pytest.raises(hg.DivergenceError) as info:
        hg.hypergradient(make(lambda lr: optax.sgd(lr)), {"lr": jnp.asarray(1e3), "wd": hp["wd"]}, 150, data, data)
    assert info.value.failure == hg.Failure.TRAINING_NONFINITE and "eps_root" not in str(info.value)
