"""The notebooks in a real JupyterLab, driven by a real headless Chromium.

The quickstart's dashboard must update while the run goes on (its values and its picture sampled several times
during the run), say it is compiling before the first hyper-iteration and the time left once they run, name the
method ("reverse mode"), end with the final values, draw every hyperparameter legibly (each trajectory that changes
by more than 10 % spans more than a few pixels of the picture) and, at the end, every record of the run; it must
never show a broken image (no picture before the first hyper-iteration); a scale button clicked while a run is
going must change the drawn scale during that run, a second click too; and its Stop button, clicked in the browser
while a run is going, must end that run early and say so, with no time left. The lr-schedules notebook must say
what runs in every phase (a progress bar that names the training run), count the online runs in inner steps, name
the method its dashboard ended on and show its results as rendered tables. The meta-learning notebook's dashboard
(the loop with ``tasks=``) must count its hyper-iterations live, show the meta-batch's accuracy, draw every record,
and stop on a click with the records done. In the classroom notebook, moving the
learning-rate slider in the browser must change the hypergradient shown, to hgkit's value at the new learning rate.

``HGKIT_SCREENSHOTS=/some/folder`` keeps a copy of every screenshot there.

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
    on_screen,
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
    if os.environ.get("HGKIT_SCREENSHOTS"):
        keep = Path(os.environ["HGKIT_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, keep / path.name)
    return path


# <img> elements of the dashboards that show as broken: no source, or one that loaded as nothing (an empty
# ipywidgets.Image); an image still loading is not counted.
BROKEN_IMAGES = """Array.from(document.querySelectorAll('.hgkit-dashboard img'))
    .filter(img => !img.getAttribute('src') || (img.complete && img.naturalWidth === 0)).length"""
# What the dashboard shows, read in one call (a sample of a fast run must not miss a state that lasts 0.3 s).
DASHBOARD = f"""() => {{
    const text = selector => {{ const e = document.querySelector(selector); return e ? e.innerText : ''; }};
    const plot = document.querySelector('.hgkit-dashboard-plot');
    return {{status: text('.hgkit-dashboard-status'), values: text('.hgkit-dashboard-values'),
             picture: plot ? plot.getAttribute('src') || '' : '', broken: {BROKEN_IMAGES},
             placeholder: document.querySelector('.hgkit-dashboard-plot-placeholder') !== null}};
}}"""


def broken_images(page) -> int:
    return page.evaluate(f"() => {BROKEN_IMAGES}")


def in_kernel(url: str, root: Path, notebook: str, expression: str, beside_the_run: bool = False):
    """The value (JSON) of ``expression`` in the notebook's kernel, with :mod:`dashboard_extents`'s functions at
    hand; ``beside_the_run``: at once, in a kernel subshell, while a cell runs."""
    source = Path(dashboard_extents.__file__).read_text()
    code = (
        f"import json\n_extents = {{}}\nexec({source!r}, _extents)\n"
        f"print(json.dumps(eval({expression!r}, {{**globals(), **_extents}})))"
    )
    out = kernel_output(url, root, notebook, code, timeout_s=TIMEOUT_MS / 1000, beside_the_run=beside_the_run)
    return json.loads(out)


def drawn_records(url: str, root: Path, notebook: str, dashboard: str, history: str) -> tuple[set, int]:
    """How many records each panel of ``dashboard``'s last picture holds, and the length of ``history``."""
    out = in_kernel(url, root, notebook, f"[sorted(set(drawn_points({dashboard}).values())), len({history})]")
    return set(out[0]), out[1]


def wait_for_text(page, selector: str, pattern: str, timeout_s: float = TIMEOUT_MS / 1000) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = text(page, selector)
        if re.search(pattern, found):
            return found
        time.sleep(0.1)
    raise AssertionError(f"{selector!r} never matched {pattern!r}; last text: {text(page, selector)!r}")


def outputs(page) -> str:
    """The text of the cells' outputs (not their code); the wide spaces of tqdm's bars as spaces."""
    return re.sub(r"[\u2000-\u200a]", " ", "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts()))


def wait_for_output(page, pattern: str, timeout_s: float = TIMEOUT_MS / 1000) -> str:
    """Wait until the cells' outputs (not their code) show ``pattern``; returns all the outputs' text."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        printed = outputs(page)
        if re.search(pattern, printed):
            return printed
        time.sleep(0.2)
    raise AssertionError(f"no output matched {pattern!r}")


def test_quickstart_dashboard_updates_live_and_stops_on_click(lab):
    url, page, root = lab
    open_and_run_all(page, url, "quickstart.ipynb", timeout_ms=TIMEOUT_MS)
    # Sample the values and the picture while the run goes on, until the dashboard says it finished; no broken
    # image at any time (while compiling a placeholder stands where the picture will be).
    samples, pictures, statuses, broken = [], [], [], []
    placeholder_while_compiling = False
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while "finished" not in (status := (now := page.evaluate(DASHBOARD))["status"]):
        assert time.monotonic() < deadline, f"the run did not finish; values {now['values']!r}"
        if status and (not statuses or statuses[-1] != status):
            statuses.append(status)
        if status and now["broken"]:
            broken.append((status, now["broken"]))
        if "compiling" in status:
            placeholder_while_compiling |= now["placeholder"]
        shown = now["values"]
        if shown and (not samples or samples[-1] != shown):
            samples.append(shown)
        if now["picture"] and (not pictures or pictures[-1] != now["picture"]):
            pictures.append(now["picture"])
        time.sleep(0.02)
    final = values(page)
    print(f"{len(samples)} different values seen:", *samples, sep="\n  ")
    print("statuses seen:", *statuses, sep="\n  ")
    assert not broken, f"broken images in the dashboard: {broken}"
    assert placeholder_while_compiling, statuses
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
    # The last picture caught up with the numbers: every panel holds every record of the run.
    points, history = drawn_records(url, root, "quickstart.ipynb", "dashboard", "result.history")
    assert points == {history} and history == total, (points, history, total)
    # The printed summary and the overview figure below the run.
    printed = wait_for_output(page, r"validation loss: first \S+ last \S+")
    first, last = map(float, re.search(r"validation loss: first (\S+) last (\S+)", printed).groups())
    assert last < first
    page.wait_for_selector(".jp-RenderedImage img", state="attached")
    page.locator(".hgkit-dashboard").first.scroll_into_view_if_needed()
    screenshot(page, root, "quickstart")

    # Run the tuning cell again, long enough to act on it while it runs (2,000 hyper-iterations): switch the
    # ‖∇f‖ panel's scale and back in the browser, each seen drawn during the run, then press Stop.
    total = 2000
    kernel_output(url, root, "quickstart.ipynb", f"HYPER_ITERATIONS = {total}")
    run_cell(page, "result = opt.run(", wait=False)
    wait_for_text(page, ".hgkit-dashboard-status", r"running")
    while not re.search(r"hyper-iteration\s*\d+\s*/", values(page)):  # compiling: a placeholder, no broken image
        assert broken_images(page) == 0, text(page, ".hgkit-dashboard-status")
        time.sleep(0.1)
    check_scale_clicks_are_drawn_during_the_run(page, url, root)
    assert broken_images(page) == 0
    page.locator(".hgkit-stop").first.click()
    status = wait_for_text(page, ".hgkit-dashboard-status", r"finished|stopped after")
    stopped_at = int(re.search(r"(\d+)\s*/", values(page)).group(1))
    screenshot(page, root, "quickstart-stopped")
    assert re.search(rf"stopped after {stopped_at} of {total} hyper-iterations \(the Stop button\)", status), status
    assert stopped_at < total, (stopped_at, total)
    assert "left" not in status and "time left" not in values(page), (status, values(page))  # the run has ended
    assert broken_images(page) == 0
    points, history = drawn_records(url, root, "quickstart.ipynb", "dashboard", "result.history")
    assert points == {history} and history == stopped_at, (points, history, stopped_at)


def check_scale_clicks_are_drawn_during_the_run(page, url: str, root: Path) -> None:
    """Click the ‖∇f‖ panel's "linear" then "log" while the run goes on; after each, the kernel (asked beside the
    run, in a subshell) must show the picture drawn on that scale while the run still goes on. Two clicks: the
    echo of the first re-routes the button's next events (hgkit/widgets/_subshell.py)."""
    state = "{'running': dashboard._running, 'scales': drawn_scales(dashboard), 'records': len(dashboard.records)}"

    def drawn_with(scale: str) -> dict:
        deadline = time.monotonic() + 60
        while True:
            now = in_kernel(url, root, "quickstart.ipynb", state, beside_the_run=True)
            if now["scales"].get("grad") == scale or not now["running"] or time.monotonic() > deadline:
                return now
            time.sleep(0.3)

    before = drawn_with("log")  # the default
    assert before["running"] and before["scales"]["grad"] == "log", before
    for scale in ("linear", "log"):
        page.locator(".hgkit-dashboard-scale-grad button", has_text=scale).first.click()
        after = drawn_with(scale)
        assert after["scales"]["grad"] == scale and after["running"], f"clicked {scale!r} during the run: {after}"
        print(f"clicked {scale!r}: drawn at record {after['records']} of the running run")


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


def test_lr_schedules_says_what_runs_and_shows_rendered_tables(lab):
    url, page, root = lab
    open_and_run_all(page, url, "lr_schedules.ipynb", timeout_ms=TIMEOUT_MS)
    # Until the notebook has run: which phases its progress bar named, what the dashboard counted, no broken image.
    phases = ("fixed-η grid", "cosine decay", "an online schedule", "random search")
    seen, counters, broken = set(), set(), []
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while "No sensitivity plot" not in (printed := outputs(page)):
        assert time.monotonic() < deadline, f"the notebook did not finish; outputs {printed[-2000:]!r}"
        seen |= {phase for phase in phases if phase in printed}
        if found := re.search(r"(hyper-iteration|inner step)\s*\d+\s*/\s*\d+", values(page)):
            counters.add(found.group(1))
        if n := broken_images(page):
            broken.append((text(page, ".hgkit-dashboard-status"), n))
        time.sleep(0.1)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached")
    print("phases seen:", seen, "counters:", counters)
    assert not broken, f"broken images in the dashboard: {broken}"
    assert {"fixed-η grid", "an online schedule"} <= seen, seen  # before and during the dashboard's runs
    assert re.search(r"\bdone\b", printed) and re.search(r"\b(\d+)/\1 \[", printed), printed[-2000:]  # every run
    assert counters == {"inner step"}, counters  # as the schedules' axis: inner steps, not hyper-iterations
    status = text(page, ".hgkit-dashboard-status")
    assert re.search(r"^MARTHE \(Δ = \d+\) — finished: (\d+) inner steps", status), status  # which method it shows
    assert "time left" not in values(page)
    # The summary as rendered tables (not their Markdown source), the learning rates without a column in
    # scientific notation, and a word instead of a sensitivity plot of single points.
    assert "|---|" not in printed and on_screen(page).locator(".jp-RenderedMarkdown table").count() >= 2
    table = on_screen(page).locator(".jp-CodeCell", has_text="ls.styled(results.table)")
    shown = table.locator(".jp-OutputArea-output").last.inner_text()
    assert "lr_end" in shown and not re.search(r"\de[-+]0\d", shown), shown
    points, history = drawn_records(url, root, "lr_schedules.ipynb", "dashboard", "results.online['MARTHE'].history")
    assert points == {history}, (points, history)
    page.locator(".hgkit-dashboard").first.scroll_into_view_if_needed()
    screenshot(page, root, "lr_schedules")


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


def test_meta_learning_dashboard_follows_the_meta_batches_and_stops_on_click(lab):
    """The loop with ``tasks=``: the dashboard counts the hyper-iterations, shows the meta-batch's mean query
    accuracy, draws every record, and its Stop button ends a run early with a history of what was done."""
    url, page, root = lab
    open_and_run_all(page, url, "meta_learning.ipynb", timeout_ms=TIMEOUT_MS)
    wait_for_output(page, r"nearest neighbour on pixels\s+5-way 1-shot")
    status = wait_for_text(page, ".hgkit-dashboard-status", r"finished")
    final = values(page)
    total = in_kernel(url, root, "meta_learning.ipynb", "ITERATIONS")
    assert re.search(rf"{total}\s*/\s*{total}", final) and re.search(r"accuracy\s+\d", final), (status, final)
    points, history = drawn_records(url, root, "meta_learning.ipynb", "dashboard", "result.history")
    assert points == {history} and history == total, (points, history, total)
    assert broken_images(page) == 0

    total = 5000  # long enough to press Stop while it runs
    kernel_output(url, root, "meta_learning.ipynb", f"ITERATIONS = {total}")
    run_cell(page, "result = opt.run(", wait=False)
    wait_for_text(page, ".hgkit-dashboard-values", r"hyper-iteration\s*([3-9]|\d\d+)\s*/\s*5000")  # updating live
    page.locator(".hgkit-stop").first.click()
    status = wait_for_text(page, ".hgkit-dashboard-status", r"finished|stopped after")
    stopped_at = int(re.search(r"(\d+)\s*/", values(page)).group(1))
    assert re.search(rf"stopped after {stopped_at} of {total} hyper-iterations \(the Stop button\)", status), status
    assert stopped_at < total, (stopped_at, total)
    wait_for_output(page, rf"{stopped_at} hyper-iterations in \d+ s")  # the cell went on with the partial result
    points, history = drawn_records(url, root, "meta_learning.ipynb", "dashboard", "result.history")
    assert points == {history} and history == stopped_at, (points, history, stopped_at)
    page.locator(".hgkit-dashboard").first.scroll_into_view_if_needed()
    screenshot(page, root, "meta_learning-stopped")
