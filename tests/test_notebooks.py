"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel (this interpreter), in smoke size.

The kernel gets ``HGKIT_SMOKE=1`` (each notebook's first code cell sizes itself on it) and runs in notebooks/, as
when opened in JupyterLab. Beyond "no error", the notebooks below have their printed results checked.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 180  # seconds; a smoke notebook takes well under a minute on 2 cores

pytestmark = pytest.mark.notebook


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A kernelspec that runs this very interpreter with HGKIT_SMOKE=1; Jupyter's folders kept in tmp_path."""
    spec = tmp_path / "jupyter" / "kernels" / "hgkit-smoke"
    spec.mkdir(parents=True)
    kernel = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "hgkit (smoke)",
        "language": "python",
        # What a notebook server gives a kernel: inline figures (the tests' MPLBACKEND=Agg would hide them).
        # This checkout's hgkit first, whatever else is installed.
        "env": {
            "HGKIT_SMOKE": "1",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        },
    }
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name in ("JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR"):
        folder = tmp_path / name.lower()
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))
    return "hgkit-smoke"


def text_of(cell) -> str:
    """Everything a code cell printed (streams and plain-text results)."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif "data" in output and "text/plain" in output["data"]:
            parts.append(output["data"]["text/plain"])
    return "".join(parts)


def outputs_with(nb, mime: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if mime in o.get("data", {})]


def check_quickstart(nb, printed: str) -> None:
    first, last = map(float, re.search(r"validation loss: first (\S+) last (\S+)", printed).groups())
    assert last < first, f"hypergradient descent did not lower the validation loss: {first} -> {last}"
    runs = int(re.search(r"hyper-iterations run: (\d+) \(stopped: None\)", printed).group(1))
    assert runs >= 2
    acc_first, acc_last = map(float, re.search(r"test accuracy: first (\S+) last (\S+)", printed).groups())
    assert 0.1 < acc_first <= 1 and 0.1 < acc_last <= 1  # better than chance (10 classes)
    # The dashboard was displayed as a widget, and the overview drawn as an inline figure.
    assert outputs_with(nb, "application/vnd.jupyter.widget-view+json")
    assert outputs_with(nb, "image/png")


def check_classroom(nb, printed: str) -> None:
    for symbol in ("η", "μ"):
        values = {
            name: float(re.search(rf"^{name} df/d{symbol} = (\S+)$", printed, re.M).group(1))
            for name in ("reverse", "forward", "finite difference")
        }
        assert values["forward"] == pytest.approx(values["reverse"], rel=1e-9), values
        assert values["finite difference"] == pytest.approx(values["reverse"], rel=1e-6), values
        assert values["reverse"] != 0
    state = int(re.search(r"one training state \|s\|: (\d+) bytes", printed).group(1))
    per_step = float(re.search(r"reverse mode: \+(\S+) bytes per extra inner step", printed).group(1))
    forward_per_step = float(re.search(r"forward mode: \+(\S+) bytes per extra inner step", printed).group(1))
    # Reverse mode stores about one state per step (the compiled program may keep a little more, never less);
    # forward mode's memory does not grow with T.
    assert state <= per_step <= 3 * state, (per_step, state)
    assert abs(forward_per_step) < 0.05 * state, forward_per_step
    assert len(outputs_with(nb, "application/vnd.jupyter.widget-view+json")) == 2


def check_hyper_cleaning(nb, printed: str) -> None:
    f1, base, oracle, cleaned = map(
        float,
        re.search(
            r"F1 of the detection: (\S+); test accuracy baseline (\S+)%, oracle (\S+)%, cleaned (\S+)%", printed
        ).groups(),
    )
    assert f1 > 0.3, f"the learned weights hardly separate corrupted from clean examples (F1 {f1})"
    assert oracle > base and cleaned > base, (base, oracle, cleaned)
    assert outputs_with(nb, "application/vnd.jupyter.widget-view+json")  # the dashboard
    assert outputs_with(nb, "image/png")


def check_three_modes(nb, printed: str) -> None:
    worst = float(re.search(r"largest relative difference between the modes: (\S+)", printed).group(1))
    assert worst < 1e-9, worst  # float64 in the notebook: reverse, forward and real-time agree to rounding
    held, claims = map(int, re.search(r"(\d+) of (\d+) claims measured hold", printed).groups())
    assert claims >= 3


def check_meta_learning(nb, printed: str) -> None:
    first, last = map(float, re.search(r"meta-batch query accuracy: first 10 (\S+), last 10 (\S+)", printed).groups())
    assert 0 <= first <= 1 and 0 <= last <= 1
    for name in ("meta-learned representation", "nearest neighbour on pixels"):
        acc, interval = map(float, re.search(rf"{name}\s+5-way 1-shot: (\S+) % ± (\S+)", printed).groups())
        assert 0 <= acc <= 100 and interval > 0
    assert outputs_with(nb, "application/vnd.jupyter.widget-view+json")  # the dashboard
    assert outputs_with(nb, "image/png")  # the episode


def check_lr_schedules(nb, printed: str) -> None:
    line = re.search(r"on MARTHE's protocol, test accuracy at the accepted point: (.*)", printed).group(1)
    accuracy = {name: float(value) for name, value in re.findall(r"([^,]+?) (\S+) %", line)}
    assert {"HD", "RTHO", "MARTHE", "fixed η"} <= {name.strip() for name in accuracy}, line
    assert all(60 < value <= 100 for value in accuracy.values()), accuracy  # trained: chance is 10 %, smoke ~85 %
    assert len(outputs_with(nb, "application/vnd.jupyter.widget-view+json")) >= 2  # both dashboards
    assert outputs_with(nb, "image/png")


CHECKS = {
    "quickstart": check_quickstart,
    "lr_schedules": check_lr_schedules,
    "meta_learning": check_meta_learning,
    "classroom": check_classroom,
    "hyper_cleaning": check_hyper_cleaning,
    "three_modes": check_three_modes,
}


def test_the_notebooks_follow_the_conventions():
    assert {p.stem for p in NOTEBOOKS} >= set(CHECKS)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert 'SMOKE = os.environ.get("HGKIT_SMOKE", "0") == "1"' in code[0].source, path.name
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_name):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, kernel_name=kernel_name, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o["output_type"] == "error"]
    assert not errors, errors
    printed = "\n".join(text_of(c) for c in nb.cells if c.cell_type == "code")
    if path.stem in CHECKS:
        print(printed)  # shown if a check fails
        CHECKS[path.stem](nb, printed)
