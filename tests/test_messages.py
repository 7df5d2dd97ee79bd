"""Bad input is refused before any compute, with a message that names the argument, what was expected and what
came: mixed float dtypes of a model and its hyperparameters, a real-time carry given other hyperparameters,
raise_if_diverged given another T or one member's hyperparameters, adaptive_sgd's numbers, a traced T."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx

import hgkit as hg

X32 = jnp.linspace(-1.0, 1.0, 15, dtype=jnp.float32).reshape(5, 3)
HP64 = {"lr": jnp.asarray(0.05), "log_wd": jnp.asarray(-6.0)}  # float64: the tests run with x64 on


def quadratic(optimizer=None):
    """w ∈ R², a quadratic with an optional weight decay ``wd`` (used when the hyperparameters have it)."""
    return hg.BilevelProblem(
        init=lambda hp, key: jnp.zeros(2),
        train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2) + jnp.sum(hp.get("wd", 0.0)) * jnp.sum(w**2),
        val_loss=lambda w, hp, b: jnp.sum((w - 2 * b) ** 2),
        optimizer=optimizer or hg.optim.momentum(lr="lr", momentum="mu"),
    )


# ----- 6: a float32 model with float64 hyperparameters -----------------------------------------------------------


class _NNXLinear(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(3, 2, rngs=rngs)  # float32 parameters, x64 or not

    def __call__(self, x):
        return self.dense(x)


_LINEN = linen.Dense(2)
FLOAT32_MODELS = {  # init and the model's forward pass
    "equinox": (
        lambda hp, key: eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=key, dtype=jnp.float32),
        lambda model, x: jax.vmap(model)(x),
        "params.layers[0].weight, params.layers[0].bias, params.layers[1].weight and 1 more are float32",
    ),
    "flax linen": (
        lambda hp, key: _LINEN.init(key, X32)["params"],
        lambda params, x: _LINEN.apply({"params": params}, x),
        "params['bias'], params['kernel'] are float32",
    ),
    "flax nnx": (
        lambda hp, key: _NNXLinear(nnx.Rngs(key)),
        lambda model, x: model(x),
        "params.dense.bias.value, params.dense.kernel.value are float32",
    ),
}


@pytest.mark.parametrize("library", FLOAT32_MODELS)
def test_float32_model_with_float64_hparams_names_the_dtypes_and_the_two_fixes(library):
    # Defect: refused with 2.2 KB of both states' dumps ending in "Are hparams and params of different float
    # dtypes?". Now two lines: which leaves have which dtype, and the README's two fixes.
    init, forward, leaves = FLOAT32_MODELS[library]
    problem = hg.BilevelProblem(
        init,
        lambda model, hp, x: jnp.mean(forward(model, x) ** 2) * (1 + jnp.exp(hp["log_wd"])),
        lambda model, hp, x: jnp.mean(forward(model, x) ** 2),
        hg.optim.momentum(lr="lr", momentum=0.9),
    )
    with pytest.raises(TypeError) as info:
        hg.hypergradient(problem, HP64, T=3, train_data=X32, val_data=X32, key=jax.random.key(0))
    message = str(info.value)
    assert f"different float dtypes: {leaves}; hparams 'log_wd', 'lr' are float64.\n" in message
    assert "jax.tree.map(lambda x: x.astype(jnp.float32), hparams)" in message
    assert "dtype=jnp.float64 in Equinox layers, param_dtype=jnp.float64 in Flax" in message
    assert len(message) < 500 and message.count("\n") == 1  # two lines, no dumps of the states
    assert message.startswith("a training step must keep the state's structure, shapes and dtypes")


def test_other_changes_of_the_state_name_the_leaf_that_changed():
    # Any other change (here an optimizer whose state changes shape) names the leaf, not a dump of both states.
    optimizer = hg.optim.Optimizer(
        init=lambda params, hp: jnp.zeros(1),
        update=lambda grads, state, params, hp, t: (jax.tree.map(lambda g: -hp["lr"] * g, grads), jnp.zeros(2)),
    )
    with pytest.raises(TypeError) as info:
        hg.hypergradient(quadratic(optimizer), {"lr": jnp.asarray(0.1)}, 3, jnp.ones(2), jnp.ones(2))
    assert str(info.value) == (
        "a training step must keep the state's structure, shapes and dtypes (the library never casts); it changed "
        "opt_state from float64[1] to float64[2]"
    )


# ----- 7: a real-time carry given other hyperparameters -----------------------------------------------------------


def test_realtime_step_names_the_hyperparameters_its_carry_was_made_for():
    # Defect: one hyperparameter more than at init ended in an internal vmap size error.
    problem, rt = quadratic(), hg.RealTime(delta=2)
    hp = {"lr": jnp.asarray(0.1), "mu": jnp.asarray(0.5)}
    carry = rt.init(problem, hp)
    more = {**hp, "wd": jnp.asarray(0.01)}
    expected = r"carry was made by init for other hyperparameters .*: init was given lr, mu; step got lr, mu, wd\."
    with pytest.raises(ValueError, match=expected):
        rt.step(problem, carry, more, jnp.ones(2), jnp.ones(2))
    with pytest.raises(ValueError, match=expected):  # from shapes alone: under jit too
        jax.jit(lambda c, h: rt.step(problem, c, h, jnp.ones(2), jnp.ones(2)))(carry, more)
    # Same names, another shape: the shape is named.
    vector = {"lr": jnp.asarray(0.1), "mu": jnp.asarray(0.5), "wd": jnp.zeros(2)}
    carry = rt.init(problem, vector)
    with pytest.raises(ValueError, match=r"wd has shape \(2,\) at init, \(3,\) at step"):
        rt.step(problem, carry, {**vector, "wd": jnp.zeros(3)}, jnp.ones(2), jnp.ones(2))
    # New values are what step is for.
    carry, res = rt.step(problem, carry, {**vector, "lr": jnp.asarray(0.2)}, jnp.ones(2), jnp.ones(2))
    assert int(res.failure) == 0 and res.train_losses.shape == (2,)


# ----- 8: raise_if_diverged checks T and hparams against the result -------------------------------------------------

DIVERGING = {"lr": jnp.asarray(1e100), "mu": jnp.asarray(0.5)}  # overflows at inner step 3


def test_raise_if_diverged_checks_T_and_hparams_against_the_result():
    # Defect: a T = 20 result given T = 50 reported the failure "at inner step 3 of T=50".
    problem = quadratic()
    res = hg.hypergradient_result(problem, DIVERGING, 20, jnp.ones(2), jnp.ones(2))
    assert (hg.Failure(int(res.failure)), int(res.failed_at)) == (hg.Failure.TRAINING_NONFINITE, 3)
    with pytest.raises(ValueError, match=r"T = 50, but result\.train_losses has shape \(20,\).* T = 20"):
        hg.raise_if_diverged(res, 50, DIVERGING)
    with pytest.raises(ValueError, match=r"hparams has lr, but the result was computed with .* lr, mu"):
        hg.raise_if_diverged(res, 20, {"lr": DIVERGING["lr"]})
    with pytest.raises(hg.DivergenceError, match=r"at inner step 3 \(0-based\) of T=20"):
        hg.raise_if_diverged(res, 20, DIVERGING)


def test_raise_if_diverged_explains_a_population_member_with_or_without_the_population_axis():
    # Defect: a population's result with one member's hyperparameters ended in an internal IndexError.
    problem = quadratic()
    population = {"lr": jnp.asarray([0.1, 1e100]), "mu": jnp.asarray([0.5, 0.5])}
    res = jax.vmap(lambda h: hg.hypergradient_result(problem, h, 20, jnp.ones(2), jnp.ones(2)))(population)
    with pytest.raises(hg.DivergenceError) as info:
        hg.raise_if_diverged(res, 20, DIVERGING)  # one member's: no population axis
    assert str(info.value).startswith(
        "population member 1 (hparams lr, mu have no population axis, so they are shown as given): the training "
        "run went non-finite at inner step 3 (0-based) of T=20"
    )
    with pytest.raises(hg.DivergenceError, match=r"^population member 1: .* lr=1e\+100, mu=0\.5\."):
        hg.raise_if_diverged(res, 20, population)  # every member's: member 1's are shown
    with pytest.raises(ValueError, match=r"T = 50, but result\.train_losses has shape \(2, 20\)"):
        hg.raise_if_diverged(res, 50, population)
    with pytest.raises(ValueError, match=re.escape("hparams 'lr' has shape (3,), but the result was computed with")):
        hg.raise_if_diverged(res, 20, {"lr": jnp.ones(3), "mu": jnp.ones(3)})


# ----- 9: adaptive_sgd's numbers ------------------------------------------------------------------------------------


def test_adaptive_sgd_refuses_non_finite_numbers_and_accepts_every_real_scalar():
    # Defect: beta=inf was accepted and the loop failed at its first update without naming beta, while
    # beta=np.float32(1e-3), a valid value, was refused.
    for name, bad in (("beta", float("inf")), ("alpha", float("inf")), ("beta", float("nan")), ("alpha", -1.0)):
        args = {"beta": 1e-3, "alpha": 1e-4, name: bad}
        with pytest.raises(ValueError, match=rf"adaptive_sgd\({name}=\.\.\.\) must be a finite number >= 0; got"):
            hg.schedules.adaptive_sgd(**args)
    for beta, alpha in ((np.float32(0.5), np.float64(0.25)), (np.asarray(0.5), jnp.asarray(0.25)), (0.5, np.int64(0))):
        steps = _steps(hg.schedules.adaptive_sgd(beta=beta, alpha=alpha))
        assert steps == _steps(hg.schedules.adaptive_sgd(beta=float(beta), alpha=float(alpha)))


def _steps(tx):
    state, steps = tx.init({"lr": jnp.asarray(1.0)}), []
    for delta in (2.0, 1.0, -1.0):
        step, state = tx.update({"lr": jnp.asarray(delta)}, state)
        steps.append(float(step["lr"]))
    return steps


def test_realtime_discount_takes_the_same_real_scalars():
    # The one check behind both: a 0-d array is a number too.
    assert hg.RealTime(delta=1, discount=np.asarray(0.5)).discount == 0.5
    assert hg.RealTime(delta=1, discount=jnp.asarray(1.0)).label == "RTHO (Δ = 1)"
    with pytest.raises(ValueError, match=r'RealTime\(discount=\.\.\.\) must be a number in \[0, 1\] or "adapt"'):
        hg.RealTime(delta=1, discount=np.asarray([0.5]))


# ----- 10: a traced T -----------------------------------------------------------------------------------------------


def test_traced_T_under_jit_is_told_to_be_static():
    problem, hp = quadratic(), {"lr": jnp.asarray(0.1), "mu": jnp.asarray(0.5)}

    def run(hp, T):
        return hg.hypergradient_result(problem, hp, T, jnp.ones(2), jnp.ones(2)).value

    with pytest.raises(ValueError) as info:
        jax.jit(run)(hp, 20)
    message = str(info.value)
    assert message.startswith("T (the number of training steps) must be a positive int")
    assert 'jax.jit(f, static_argnames=("T",))' in message and "static_argnums" in message
    # ... which is what works.
    assert float(jax.jit(run, static_argnames=("T",))(hp, 20)) == float(run(hp, 20))


# ----- results and errors as a user meets them ---------------------------------------------------------------------


def test_a_loop_result_prints_short_and_as_html():
    problem = hg.BilevelProblem(
        init=lambda hp, key: {"w": jnp.zeros(2), "act": jnp.tanh},  # a static leaf: its repr must not be dumped
        train_loss=lambda w, hp, b: jnp.sum((w["w"] - b) ** 2) + hp["wd"] * jnp.sum(w["w"] ** 2),
        val_loss=lambda w, hp, b: jnp.sum((w["w"] - 0.5 * b) ** 2),
        optimizer=hg.optim.sgd(0.1),
    )
    opt = hg.HyperOptimizer(problem, hyper_optimizer=optax.sgd(0.5))
    hp = {"wd": jnp.asarray(0.1), "each": jnp.full(6, 0.1)}
    result = opt.run(hp, 5, 30, jnp.ones(2), jnp.ones(2), progress=False)
    text, wd = repr(result), float(result.hparams["wd"])
    assert len(text.splitlines()) <= 8 and "Array(" not in text and "tanh" not in text
    assert "5 of 5 hyper-iterations, ran to the end" in text and f"wd = {wd:.6g}" in text
    assert "each = shape (6,), mean 0.1" in text and "result.history" in text
    loss = result.history.val_loss
    assert f"first {loss.iloc[0]:.6g}, best {loss.min():.6g}, last {loss.iloc[-1]:.6g}" in text
    assert result.summary() in text
    html = result._repr_html_()
    assert html.startswith("<div class='hgkit-result'>") and f"{wd:.6g}" in html and "Array(" not in html


def test_forgetting_the_key_that_init_needs_says_key():
    problem = hg.BilevelProblem(
        init=lambda hp, key: jax.random.normal(key, (2,)),
        train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2) * hp["c"],
        val_loss=lambda w, hp, b: jnp.sum(w**2),
        optimizer=hg.optim.sgd(0.1),
    )
    hp, b = {"c": jnp.asarray(1.0)}, jnp.ones(2)
    missing = r"init\(hparams, key\) uses its key, but no key was given \(key=None\): pass one, e\.g\. key=jax\.random"
    with pytest.raises(TypeError, match=missing):
        hg.hypergradient(problem, hp, 5, b, b)
    with pytest.raises(TypeError, match=missing):
        hg.HyperOptimizer(problem).run(hp, 2, 5, b, b, progress=False)
    assert np.isfinite(float(hg.hypergradient(problem, hp, 5, b, b, key=jax.random.key(0))[1]["c"]))


def test_numpy_float64_hyperparameters_without_x64_are_refused_at_the_boundary():
    problem = hg.BilevelProblem(lambda hp, k: jnp.zeros(2), lambda w, hp, b: jnp.sum((w - b) ** 2),
                                lambda w, hp, b: jnp.sum(w**2), hg.optim.sgd("lr"))  # fmt: skip
    with jax.enable_x64(False):
        with pytest.raises(TypeError, match=r"hparams\['lr'\] is a NumPy float64 value, which JAX stores as float32"):
            hg.HyperOptimizer(problem).run({"lr": np.float64(0.1)}, 2, 5, jnp.ones(2), jnp.ones(2), progress=False)
        _, g = hg.hypergradient(problem, {"lr": np.float32(0.1)}, 5, jnp.ones(2), jnp.ones(2))  # no truncation
        assert g["lr"].dtype == jnp.float32
