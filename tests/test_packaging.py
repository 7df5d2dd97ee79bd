"""The set-up files agree with each other: environment.yml with pyproject.toml, .ci/run with the README."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_the_project_through_pip():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    version = python.split("=", 1)[1]
    minimum = re.match(r">=\s*([\d.]+)", project["requires-python"]).group(1)
    assert tuple(map(int, version.split("."))) >= tuple(map(int, minimum.split(".")))
    assert "pip" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    # The project itself, with extras that pyproject.toml defines, and nothing pinned beside it to drift.
    assert len(pip) == 1
    match = re.fullmatch(r"-e \.\[([\w,]+)\]", pip[0])
    assert match, pip
    assert set(match.group(1).split(",")) <= set(project["optional-dependencies"])


def test_pyproject_has_the_extras_the_readme_uses():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"test", "notebooks", "bench"} <= set(extras)
    # torch is only ever in the benchmark extra: the test install must stay small and CPU-only.
    assert not any(d.startswith("torch") for name, ds in extras.items() if name != "bench" for d in ds)


def readme_command(marker):
    text = (ROOT / "README.md").read_text()
    block = text.split(f"<!-- {marker} -->", 1)[1]
    return block.split("```", 2)[1].split("\n", 1)[1].strip()


def test_ci_runs_exactly_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    awk = re.search(r"cmd=\$\((awk .*README\.md)\)", script).group(1)
    extracted = subprocess.run(["bash", "-c", awk], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert extracted.strip() == readme_command("test-command")
    assert "\n" not in extracted.strip()


def test_readme_quickstart_runs_as_written(readme_quickstart):
    """The README's quickstart block, executed verbatim (conftest's ``readme_quickstart``, on a 50-image slice of the
    data); then its hypergradient checked against forward mode."""
    namespace = readme_quickstart
    hg, jnp = namespace["hg"], namespace["jnp"]
    grads = namespace["grads"]
    assert set(grads) == {"lr", "mu", "log_wd"}
    assert all(jnp.isfinite(g) and g.dtype == namespace["hparams"][k].dtype for k, g in grads.items())
    _, forward = hg.hypergradient(
        namespace["problem"],
        namespace["hparams"],
        T=100,
        train_data=(namespace["x_train"], namespace["y_train"]),
        val_data=(namespace["x_val"], namespace["y_val"]),
        method=hg.Forward(),
        key=namespace["jax"].random.key(0),
    )
    for k in grads:  # the data is float32 even under float64 parameters: agreement to float32 accuracy
        assert abs(float(grads[k] - forward[k])) <= 1e-5 * abs(float(forward[k])) + 1e-9, k


def test_import_hgkit_loads_no_heavy_dependency():
    """`import hgkit` loads neither pandas, tqdm, matplotlib nor ipywidgets (a fresh interpreter); a run still
    works after it, and loads pandas when it makes its history."""
    script = textwrap.dedent("""
        import sys
        import jax.numpy as jnp, optax, hgkit as hg
        heavy = ("pandas", "tqdm", "matplotlib", "ipywidgets")
        print([m for m in heavy if m in sys.modules])
        problem = hg.BilevelProblem(
            init=lambda hp, key: jnp.zeros(2),
            train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2) + hp["wd"] * jnp.sum(w**2),
            val_loss=lambda w, hp, b: jnp.sum((w - 0.5 * b) ** 2),
            optimizer=hg.optim.sgd(0.1))
        result = hg.HyperOptimizer(problem, hyper_optimizer=optax.sgd(0.5)).run(
            {"wd": jnp.asarray(0.1)}, hyper_iterations=2, T=3, train_data=jnp.ones(2), val_data=jnp.ones(2),
            progress=False)
        print(len(result.history), "pandas" in sys.modules)
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["[]", "2 True"]
