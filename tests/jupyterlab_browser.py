"""A real JupyterLab on 127.0.0.1 and a real headless Chromium driving it, for the browser tests.

Everything is hermetic: Jupyter's and IPython's configuration, data and runtime folders, matplotlib's cache and
Chromium's profile live in a temporary folder; nothing reaches beyond loopback.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing_requirements() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return "Chromium is not installed (Debian package 'chromium'; .ci/run installs it)"
    try:
        import jupyterlab  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed (pip install -e '.[test]')"
    return None


def hermetic_env(root: Path) -> dict[str, str]:
    """Environment variables that keep Jupyter, IPython and matplotlib inside ``root``."""
    env = dict(os.environ)
    for name in ("IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "MPLCONFIGDIR"):
        path = root / name.lower()
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    # Tracebacks without colour codes, so a failing cell reads clearly in the test's output.
    profile = root / "ipythondir" / "profile_default"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "ipython_kernel_config.py").write_text('c.InteractiveShell.colors = "nocolor"\n')
    # The announcements pop-up would cover the notebook; render every cell (no windowing) so cells below the fold
    # exist in the DOM.
    labconfig = root / "jupyter_config_dir" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    settings = root / "lab-user-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    docmanager = root / "lab-user-settings" / "@jupyterlab" / "docmanager-extension"
    docmanager.mkdir(parents=True, exist_ok=True)
    (docmanager / "plugin.jupyterlab-settings").write_text(json.dumps({"autoStartDefaultKernel": True}))
    # JupyterLab ≥ 4.4 sends widget events to a kernel subshell of its own; other frontends (and JupyterLab with
    # this setting) send them to the main shell, busy with a running cell. Off here, so that what hgkit does for
    # its widgets during a run (hgkit/widgets/_subshell.py) is what the tests see work.
    kernels = root / "lab-user-settings" / "@jupyterlab" / "apputils-extension"
    kernels.mkdir(parents=True, exist_ok=True)
    (kernels / "kernels-settings.jupyterlab-settings").write_text(json.dumps({"commsOverSubshells": "disabled"}))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab(notebook_dir: Path, root: Path, timeout: float = 60.0):
    """Serve ``notebook_dir`` with JupyterLab on 127.0.0.1; yields the base URL. Stops the server by its pid."""
    env = hermetic_env(root)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        "--ServerApp.disable_check_xsrf=True",
        f"--ServerApp.root_dir={notebook_dir}",
        f"--LabApp.user_settings_dir={root / 'lab-user-settings'}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = open(root / "jupyterlab.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=notebook_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {(root / 'jupyterlab.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"JupyterLab did not start: {(root / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@contextmanager
def chromium_page(root: Path, width: int = 1400, height: int = 1000):
    """A page in headless Chromium (Playwright, Debian's browser: never a downloaded one)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(root / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def open_notebook(page, url: str, notebook: str, timeout_ms: int = 60_000) -> None:
    """Open ``notebook`` in JupyterLab, alone (``reset`` drops the tabs an earlier test left open: their cells would
    match the same selectors, hidden), and wait until its kernel is idle."""
    page.goto(f"{url}/lab/tree/{notebook}?reset", timeout=timeout_ms)
    page.wait_for_selector(".jp-Notebook", state="attached", timeout=timeout_ms)
    accept_dialog(page)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached", timeout=timeout_ms)


def prompts(page) -> list[str]:
    """The input prompts of the code cells: '[ ]:' never run, '[*]:' queued or running, '[3]:' done."""
    return [t.strip() for t in on_screen(page).locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]


def on_screen(page):
    """The notebook on screen (other notebooks' cells may be in the page, hidden)."""
    return page.locator(".jp-NotebookPanel:visible").first


def started(prompt: str) -> bool:
    return bool(re.search(r"[*\d]", prompt))


def until(page, condition, timeout_s: float) -> bool:
    """Poll ``condition()`` until it holds (True) or ``timeout_s`` passes (False); accepts a late dialog meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        accept_dialog(page, wait_ms=100)
        time.sleep(0.2)
    return False


def trigger(page, action, took, what: str, tries: int = 4, wait_s: float = 30.0) -> None:
    """Do ``action()`` until ``took()`` shows it happened.

    A click can be lost on a loaded machine (a menu opened before the notebook was ready, a cell not yet focused),
    and then the test would wait for outputs that never come. So the action is repeated, a few times, until the
    notebook shows that it was taken; the error names what never happened and what the prompts showed.
    """
    for _ in range(tries):
        action()
        if until(page, took, wait_s):
            return
        page.keyboard.press("Escape")  # close a menu left open
    raise AssertionError(f"{what} never happened after {tries} tries; the prompts show {prompts(page)}")


def open_and_run_all(page, url: str, notebook: str, timeout_ms: int = 60_000) -> None:
    """Open ``notebook`` in JupyterLab, wait for its kernel, and run all cells from the Run menu."""
    open_notebook(page, url, notebook, timeout_ms)

    def run_all():
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

    trigger(page, run_all, lambda: any(map(started, prompts(page))), f"Run All Cells in {notebook}")


def run_cell(page, has_text: str, timeout_ms: int = 60_000, wait: bool = True) -> None:
    """Run the code cell that contains ``has_text`` (click into it, Shift+Enter), again if it ran before; with
    ``wait``, wait until it has finished."""
    cell = on_screen(page).locator(".jp-CodeCell", has_text=has_text).first

    def prompt() -> str:
        return cell.locator(".jp-InputPrompt").first.inner_text().strip()

    def run():
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")

    before = prompt()  # '[ ]:' never run, '[4]:' run before: either way the press shows as a change
    trigger(page, run, lambda: prompt() != before, f"running the cell with {has_text!r}")
    if wait and not until(page, lambda: re.search(r"\d", prompt()), timeout_ms / 1000):
        raise AssertionError(f"the cell with {has_text!r} did not finish in {timeout_ms / 1000:.0f} s: {prompt()}")


def kernel_output(
    url: str, root: Path, notebook: str, code: str, timeout_s: float = 120.0, beside_the_run: bool = False
) -> str:
    """Run ``code`` in the kernel of ``notebook`` beside the page, and return what it printed (stdout).

    The kernel is the notebook's session's (the server's ``/api/sessions``), reached through its connection file
    in the hermetic runtime folder; the code stays out of the notebook's history (its prompts keep their numbers).
    It runs after the cells the notebook has queued, or, with ``beside_the_run``, at once in a kernel subshell of
    its own (ipykernel ≥ 7), while a cell still runs: how a test reads what a live run shows.
    """
    with urllib.request.urlopen(f"{url}/api/sessions", timeout=10) as r:
        sessions = [s for s in json.load(r) if Path(s["path"]).name == notebook]
    if not sessions:
        raise AssertionError(f"no kernel session for {notebook}")
    connection = root / "jupyter_runtime_dir" / f"kernel-{sessions[0]['kernel']['id']}.json"

    def run() -> str:
        from jupyter_client import BlockingKernelClient

        client = BlockingKernelClient(connection_file=str(connection))
        client.load_connection_file()
        client.start_channels()
        printed, errors = [], []

        def collect(msg):
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                printed.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                errors.append("\n".join(msg["content"]["traceback"]))

        try:
            if beside_the_run:
                reply = _execute_in_subshell(client, code, collect, timeout_s)
            else:
                reply = client.execute_interactive(code, store_history=False, output_hook=collect, timeout=timeout_s)
        finally:
            client.stop_channels()
        if reply["content"]["status"] != "ok":
            raise AssertionError(f"the code failed in the kernel of {notebook}: {errors or reply['content']}")
        return "".join(printed)

    # In a thread of its own: the kernel client runs an event loop, which must not be the one Playwright's sync
    # API keeps in this thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def accept_dialog(page, wait_ms: int = 1500) -> None:
    """Accept a dialog (e.g. kernel selection) if one opens."""
    try:
        page.wait_for_selector(".jp-Dialog .jp-mod-accept", timeout=wait_ms)
    except Exception:  # no dialog: nothing to accept
        return
    page.locator(".jp-Dialog .jp-mod-accept").first.click()


def _reply_to(get, msg_id: str, deadline: float) -> dict:
    """The message that answers ``msg_id``, read with ``get(timeout)`` (others are dropped)."""
    while True:
        msg = get(timeout=max(deadline - time.monotonic(), 0.01))
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def _execute_in_subshell(client, code: str, output_hook, timeout_s: float) -> dict:
    """Run ``code`` in a new subshell of the kernel (a thread beside its main one: JEP 91, ipykernel ≥ 7), feeding
    its output messages to ``output_hook``; the execute reply. The subshell is deleted afterwards."""
    deadline = time.monotonic() + timeout_s
    request = client.session.msg("create_subshell_request", {})
    client.control_channel.send(request)
    created = _reply_to(client.get_control_msg, request["header"]["msg_id"], deadline)["content"]
    if "subshell_id" not in created:
        raise AssertionError(f"the kernel made no subshell (ipykernel ≥ 7 has them): {created}")
    subshell = created["subshell_id"]
    try:
        content = dict(code=code, silent=False, store_history=False, user_expressions={}, allow_stdin=False,
                       stop_on_error=True)  # fmt: skip
        execute = client.session.msg("execute_request", content)
        execute["header"]["subshell_id"] = subshell
        client.shell_channel.send(execute)
        msg_id = execute["header"]["msg_id"]
        while True:  # its output, until the subshell says it is idle again
            msg = _reply_to(client.get_iopub_msg, msg_id, deadline)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
            output_hook(msg)
        return _reply_to(client.get_shell_msg, msg_id, deadline)
    finally:
        request = client.session.msg("delete_subshell_request", {"subshell_id": subshell})
        client.control_channel.send(request)
        _reply_to(client.get_control_msg, request["header"]["msg_id"], time.monotonic() + 10)
