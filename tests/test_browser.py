"""The notebooks in a real JupyterLab, driven by a real headless Chromium.

The quickstart's dashboard must update while the run goes on (its values and its picture sampled several times
during the run), say it is compiling before the first hyper-iteration and the time left once they run, name the
method ("reverse mode"), end with the final values, draw every hyperparameter legibly (each trajectory that changes
by more than 10 % spans more than a few pixels of the picture), and its Stop button, clicked in the browser while a
run is going, must end that run early and say so. In the classroom notebook, moving the learning-rate slider in
the browser must change the hypergradient shown, to hgkit's value at the new learning rate.

Skips only when Chromium (or JupyterLab / Playwright) is not installed, and says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import dashboard_extents
import pytest
from jupyterlab_browser import (
    chromium_page,
    jupyterlab,
    kernel_output,
    missing_requirements,
    open_and_run_all,
    open_notebook,
    run_cell,
)

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 240_000  # generous for a shared machine: the file took 59 s at load 5.7 and 119 s at load 10, on 2 cores

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a copy of notebooks/ (autosave must not write outputs into the repository), with
    HGKIT_SMOKE=1 and this checkout's hgkit first on PYTHONPATH in the server's environment, so that kernels
    inherit them; and a Chromium page."""
    why = missing_requirements()
    if why:
        pytest.skip(f"browser test not run: {why}")
    root = tmp_path_factory.mktemp("lab")
    notebooks = root / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HGKIT_SMOKE", "1")
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        # A notebook's own settings, not the test suite's: inline figures, JAX's real device count.
        mp.delenv("MPLBACKEND", raising=False)
        mp.delenv("XLA_FLAGS", raising=False)
        with jupyterlab(notebooks, root) as url, chromium_page(root) as page:
            page.set_default_timeout(TIMEOUT_MS)
            yield url, page, root


def text(page, selector: str) -> str:
    locator = page.locator(selector)
    return locator.first.inner_text() if locator.count() else ""


def values(page) -> str:
    return text(page, ".hgkit-dashboard-values")


def screenshot(page, root: Path, name: str) -> Path:
    path = root / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def wait_for_text(page, selector: str, pattern: str, timeout_s: float = TIMEOUT_MS / 1000) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = text(page, selector)
        if re.search(pattern, found):
            return found
        time.sleep(0.1)
    raise AssertionError(f"{selector!r} never matched {pattern!r}; last text: {text(page, selector)!r}")


def wait_for_output(page, pattern: str, timeout_s: float = TIMEOUT_MS / 1000) -> str:
    """Wait until the cells' outputs (not their code) show ``pattern``; returns all the outputs' text."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        printed = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
        if re.search(pattern, printed):
            return printed
        time.sleep(0.2)
    raise AssertionError(f"no output matched {pattern!r}")


def test_quickstart_dashboard_updates_live_and_stops_on_click(lab):
    url, page, root = lab
    open_and_run_all(page, url, "quickstart.ipynb", timeout_ms=TIMEOUT_MS)
    # Sample the values and the picture while the run goes on, until the dashboard says it finished.
    samples, pictures, statuses = [], [], []
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while "finished" not in (status := text(page, ".hgkit-dashboard-status")):
        assert time.monotonic() < deadline, f"the run did not finish; values {values(page)!r}"
        if status and (not statuses or statuses[-1] != status):
            statuses.append(status)
        shown = values(page)
        if shown and (not samples or samples[-1] != shown):
            samples.append(shown)
            picture = page.locator(".hgkit-dashboard-plot").first.get_attribute("src") or ""
            pictures.append(picture)
        time.sleep(0.05)
    final = values(page)
    print(f"{len(samples)} different values seen:", *samples, sep="\n  ")
    print("statuses seen:", *statuses, sep="\n  ")
    # Compiling first, then the expected time left; the method by its label, not a dataclass repr.
    assert any(re.search(r"reverse mode; compiling", s) for s in statuses), statuses
    assert any(re.search(r"reverse mode; about .* left", s) for s in statuses), statuses
    assert not any("Reverse(" in s for s in statuses), statuses
    counts = [re.search(r"(\d+)\s*/\s*(\d+)", s) for s in samples]  # "waiting for the first …" has none
    progress = [(int(m.group(1)), int(m.group(2))) for m in counts if m]
    during = [(k, n) for k, n in progress if k < n]
    assert len(during) >= 2, f"fewer than two different values seen during the run: {samples}"
    assert len({p for p in pictures if p}) >= 2, "the dashboard's picture did not change during the run"
    total = progress[0][1]
    assert re.search(rf"{total}\s*/\s*{total}", final), final
    check_every_hyperparameter_is_legible(page, url, root)
    assert re.search(r"val_loss\s+\d", final) and re.search(r"lr\s+\d", final), final
    # The printed summary and the overview figure below the run.
    printed = wait_for_output(page, r"validation loss: first \S+ last \S+")
    first, last = map(float, re.search(r"validation loss: first (\S+) last (\S+)", printed).groups())
    assert last < first
    page.wait_for_selector(".jp-RenderedImage img", state="attached")
    page.locator(".hgkit-dashboard").first.scroll_into_view_if_needed()
    screenshot(page, root, "quickstart")

    # Run the tuning cell again (compiled now, so quick) and press Stop in the browser once it is under way.
    run_cell(page, "result = opt.run(", wait=False)
    wait_for_text(page, ".hgkit-dashboard-status", r"running")
    wait_for_text(page, ".hgkit-dashboard-values", r"hyper-iteration\s*\d+\s*/")
    page.locator(".hgkit-stop").first.click()
    status = wait_for_text(page, ".hgkit-dashboard-status", r"finished|stopped after")
    stopped_at = int(re.search(r"(\d+)\s*/", values(page)).group(1))
    screenshot(page, root, "quickstart-stopped")
    assert re.search(rf"stopped after {stopped_at} of {total} hyper-iterations \(the Stop button\)", status), status
    assert stopped_at < total, (stopped_at, total)


def check_every_hyperparameter_is_legible(page, url: str, root: Path) -> None:
    """What the dashboard's last picture drew of each hyperparameter (:mod:`dashboard_extents`, run in the
    notebook's kernel on its ``dashboard``): every hyperparameter is there, and each whose value changed by more
    than 10 % spans more than a few pixels vertically, inside the picture as the browser shows it."""
    source = Path(dashboard_extents.__file__).read_text()
    code = (
        f"import json\n_extents = {{}}\nexec({source!r}, _extents)\n"
        "print(json.dumps(_extents['drawn_extents'](dashboard)))"
    )
    drawn = json.loads(kernel_output(url, root, "quickstart.ipynb", code, timeout_s=TIMEOUT_MS / 1000))
    print("drawn:", drawn)
    # The quickstart constrains lr and wd with log(): on log axes by default.
    assert drawn["lr"]["scale"] == drawn["wd"]["scale"] == "log" and drawn["mu"]["scale"] == "linear", drawn
    assert {"lr", "mu", "wd"} <= set(drawn), drawn
    image = page.locator(".hgkit-dashboard-plot").first
    box = image.bounding_box()
    assert box and box["height"] > 150, box  # shown at a readable size
    scale = box["width"] / image.evaluate("img => img.naturalWidth")  # the PNG's pixels to the screen's
    for name, e in drawn.items():
        if e["high"] - e["low"] > 0.1 * max(abs(e["low"]), abs(e["high"])):
            on_screen = e["pixels"] * scale
            assert on_screen > 8, f"{name} changed from {e['low']} to {e['high']} but is drawn {on_screen:.1f} px high"


def number(page, selector: str) -> float:
    """The number an hgkit HTML widget shows (its label is beside it)."""
    return float(page.locator(f"{selector} .widget-html-content").first.inner_text())


def test_classroom_slider_moves_the_hypergradient(lab):
    from hgkit.widgets.classroom import explorer_state

    url, page, root = lab
    # Run the notebook's first two code cells: its settings and the explorer (the cost measurements below it are the
    # notebook test's business).
    open_notebook(page, url, "classroom.ipynb", timeout_ms=TIMEOUT_MS)
    run_cell(page, "SMOKE = ", timeout_ms=TIMEOUT_MS)
    run_cell(page, "explorer = Explorer(", timeout_ms=TIMEOUT_MS)
    page.wait_for_selector(".hgkit-hypergradient .widget-html-content", state="attached")
    wait_for_text(page, ".hgkit-hypergradient .widget-html-content", r"\d")
    before = number(page, ".hgkit-hypergradient")
    assert before == pytest.approx(explorer_state(lr=0.1, mu=0.5, T=10)["hypergradient"], rel=1e-9)
    # Move the learning-rate slider with the keyboard, as a user would: 4 steps of 0.005 to the right.
    handle = page.locator(".hgkit-lr .noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    lr = float(text(page, ".hgkit-lr .widget-readout"))
    assert lr == pytest.approx(0.12)
    # Each key press is a new value for the kernel; the page must end showing hgkit's hypergradient at the last.
    expected = explorer_state(lr=lr, mu=0.5, T=10)["hypergradient"]
    assert abs(expected - before) > 0.1 * abs(before)
    deadline = time.monotonic() + 30
    while (shown := number(page, ".hgkit-hypergradient")) != pytest.approx(expected, rel=1e-9):
        assert time.monotonic() < deadline, f"the page shows df/dη = {shown}, hgkit gives {expected} at η = {lr}"
        time.sleep(0.1)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached")
    page.locator(".hgkit-explorer").first.scroll_into_view_if_needed()
    screenshot(page, root, "classroom")
