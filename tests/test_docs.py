"""The documentation site: it builds with every warning an error, documents every public name, shows the README's
commands, and renders in a real headless Chromium.

The site is built once per test run (``docs/build.sh``'s command, into a temporary folder): under pytest-xdist the
first worker to get here builds it and the other reuses it. The build is the test of the cross-references: with
``-W`` a broken one, a public module missing from the reference or a page left out of the navigation fails it.

The notebooks' pages are ``docs/site/notebooks/*.ipynb``, the notebooks with the outputs of a run at their default
size (``bash docs/refresh_notebooks.sh`` writes them; nothing is executed here): a test checks that each copy's cells
are its notebook's, so they cannot drift silently. The browser tests open the pages with every request beyond the
local server cut off: each notebook page must show a figure, and its maths must be rendered (MathJax, served by the
site itself).

Only the browser tests skip, and say why, when Chromium (or Playwright) is not installed.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docs" / "site"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXECUTED = SOURCE / "notebooks"  # the notebooks with their outputs: the site's pages (docs/refresh_notebooks.sh)
EXECUTED_MAX_BYTES = 4 * 2**20  # all the executed copies together: a few MB at most in the repository
BUILD_TIMEOUT = 600  # seconds; the build takes about a minute (30 s of CPU) on 2 busy cores


def build_command(out: Path) -> list[str]:
    """``docs/build.sh``'s command, with this interpreter."""
    return [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(SOURCE), str(out)]


@contextlib.contextmanager
def exclusive(path: Path):
    """Hold an exclusive lock on ``path`` (so that one xdist worker builds while the other waits)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no sharing, each worker builds for itself
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def site(request, tmp_path_factory) -> dict:
    """Build the site once for the session (shared by the xdist workers); ``{"out", "returncode", "output",
    "seconds"}``."""
    worker = hasattr(request.config, "workerinput")  # an xdist worker: its base temp is one of the run's
    shared = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    out, record = shared / "docs-site", shared / "docs-site.json"
    with exclusive(shared / "docs-site.lock"):
        if not record.exists():
            env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0")
            start = time.monotonic()
            done = subprocess.run(
                build_command(out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT
            )
            seconds = time.monotonic() - start
            result = dict(out=str(out), returncode=done.returncode, output=done.stdout + done.stderr, seconds=seconds)
            record.write_text(json.dumps(result))
        result = json.loads(record.read_text())
    print(f"docs build: {result['seconds']:.1f} s into {result['out']}")
    return result


@pytest.fixture(scope="session")
def built(site) -> Path:
    if site["returncode"] != 0:
        pytest.fail(f"the docs build failed (see test_site_builds_with_warnings_as_errors):\n{site['output'][-5000:]}")
    return Path(site["out"])


def test_site_builds_with_warnings_as_errors(site):
    problems = [line for line in site["output"].splitlines() if re.search(r"WARNING|ERROR|CRITICAL", line)]
    assert site["returncode"] == 0 and not problems, "\n".join(problems) or site["output"][-5000:]


# --- what the reference documents -----------------------------------------------------------------------------------


def inventory(path: Path) -> dict[str, str]:
    """``objects.inv`` (format 2) as ``{name: "domain:role"}`` for the Python domain."""
    data = path.read_bytes()
    header_end = 0
    for _ in range(4):  # four header lines, then zlib
        header_end = data.index(b"\n", header_end) + 1
    assert data.startswith(b"# Sphinx inventory version 2"), data[:60]
    entries = {}
    for line in zlib.decompress(data[header_end:]).decode().splitlines():
        match = re.match(r"(.+?)\s+(py:\w+)\s+(-?\d+)\s+(\S*)\s+(.*)", line)
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


def public_modules() -> list[str]:
    import hgkit

    found = [m.name for m in pkgutil.walk_packages(hgkit.__path__, "hgkit.")]
    return ["hgkit"] + sorted(m for m in found if not any(p.startswith("_") for p in m.split(".")))


def locate(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise LookupError(dotted)


def test_every_public_name_is_in_the_reference(built):
    """Every public module is a ``py:module`` of the reference; every name of ``hgkit.__all__`` is documented as
    ``hgkit.NAME``; every name of every public module's ``__all__`` is documented (at that name, or at another
    public name of the same object, to which the module's table links)."""
    import hgkit

    entries = inventory(built / "objects.inv")
    documented: set[int] = set()
    for name, role in entries.items():
        if role != "py:module" and name.startswith("hgkit."):
            with contextlib.suppress(Exception):
                documented.add(id(locate(name)))

    missing = [m for m in public_modules() if entries.get(m) != "py:module"]
    assert not missing, f"public modules missing from the API reference: {missing}"
    for name in hgkit.__all__:
        obj = getattr(hgkit, name)
        expected = obj.__name__ if inspect.ismodule(obj) else f"hgkit.{name}"
        assert expected in entries, f"hgkit.{name} is not in the API reference"
    for modname in public_modules():
        module = importlib.import_module(modname)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                assert entries.get(obj.__name__) == "py:module", f"{modname}.{name}: module not in the reference"
            else:
                assert f"{modname}.{name}" in entries or id(obj) in documented, (
                    f"{modname}.{name} is not in the API reference"
                )
        page = next((p for p in (built / "api").glob("*.html") if f'id="module-{modname}"' in p.read_text()), None)
        assert page is not None, f"no API page has the module {modname}"


def test_api_pages_document_record_fields_in_words(built):
    """No NamedTuple field is left as Python's "Alias for field number N": a field with a trailing comment in its
    class has an entry that says it; the others are described by their class's docstring (docs/site/_ext)."""
    sys.path.insert(0, str(SOURCE / "_ext"))
    try:
        import hgkit_docs
    finally:
        sys.path.remove(str(SOURCE / "_ext"))

    stubs = {p.name: p.read_text().count("Alias for field number") for p in (built / "api").glob("*.html")}
    assert not any(stubs.values()), f"field stubs in the API pages: { {k: v for k, v in stubs.items() if v} }"
    entries = inventory(built / "objects.inv")
    missing = []
    for cls, _ in hgkit_docs.namedtuple_fields().values():
        documented = [n for n in entries if n.endswith(f".{cls.__name__}") and entries[n] == "py:class"]
        for field in set(hgkit_docs.field_comments(cls)) - hgkit_docs.attributes_section(cls):
            if documented and not any(f"{name}.{field}" in entries for name in documented):
                missing.append(f"{cls.__name__}.{field}")
    assert not missing, f"commented NamedTuple fields without an entry: {sorted(set(missing))}"
    text = page_text(built / "api" / "hgkit.html")
    assert "the tuned hyperparameters (constrained values)" in text  # HyperOptimizationResult.hparams's comment


def readme_block(marker: str) -> str:
    """The fenced block after ``<!-- marker -->`` (or after the heading ``marker``) in README.md."""
    text = (ROOT / "README.md").read_text()
    start = (
        re.search(rf"^{re.escape(marker)}\s*$", text, re.M).end()
        if marker.startswith("#")
        else text.index(f"<!-- {marker} -->")
    )
    return re.search(r"^```\w*\n(.*?)^```", text[start:], re.M | re.S).group(1).strip()


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data):
        self.parts.append(data)


def page_text(path: Path) -> str:
    parser = _Text()
    parser.feed(path.read_text())
    return "".join(parser.parts)


def test_getting_started_shows_the_readme_commands_and_quickstart(built):
    text = page_text(built / "getting-started.html")
    for marker in ("main-command", "test-command", "## Quickstart", "## The optimization loop"):
        block = readme_block(marker)
        assert block in text, f"README block {marker!r} is not on the getting-started page"
    # The README links to the site and says how to build it.
    readme = (ROOT / "README.md").read_text()
    assert "docs/build.sh" in readme and "docs/_build/html" in readme


def test_docs_build_script_runs_the_documented_command():
    script = (ROOT / "docs" / "build.sh").read_text()
    assert "-m sphinx -W --keep-going -b html docs/site docs/_build/html" in script


# --- the notebooks' pages --------------------------------------------------------------------------------------------


def cells(nb: dict) -> list[tuple[str, str]]:
    """``(cell_type, source)`` of each cell."""
    return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]


def figures(nb: dict) -> int:
    """The PNG figures among a notebook's outputs (an ``image/png`` output, or one inside a widget's static
    picture)."""
    count = 0
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            count += "image/png" in data
            count += "".join(data.get("text/html", "")).count("src='data:image/png;base64,")
    return count


def test_the_site_shows_each_notebook_as_it_is_with_the_outputs_of_a_default_run():
    """``docs/site/notebooks/NAME.ipynb`` is ``notebooks/NAME.ipynb`` cell for cell, every code cell run at the
    notebook's default size, without errors, with at least one figure, and without widget state (a static page
    cannot render a live widget: each is shown as a static picture)."""
    refresh = "run: bash docs/refresh_notebooks.sh (it runs again only the notebooks whose code changed)"
    copies = sorted(p.name for p in EXECUTED.glob("*.ipynb"))
    assert copies == [p.name for p in NOTEBOOKS], f"docs/site/notebooks/ is not notebooks/: {copies}; {refresh}"
    total = sum(p.stat().st_size for p in EXECUTED.glob("*.ipynb"))
    assert total <= EXECUTED_MAX_BYTES, f"the executed notebooks take {total / 2**20:.1f} MiB"
    for path in NOTEBOOKS:
        source, executed = (json.loads(p.read_text(encoding="utf-8")) for p in (path, EXECUTED / path.name))
        ours, theirs = cells(source), cells(executed)
        differ = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
        assert ours == theirs, (
            f"docs/site/notebooks/{path.name} is not notebooks/{path.name}: "
            + (f"cell {differ} differs" if differ is not None else f"{len(theirs)} cells, not {len(ours)}")
            + f"; {refresh}"
        )
        run = executed["metadata"].get("hgkit_docs", {})
        assert run.get("size") == "default", f"{path.name}: not run at its default size ({run}); {refresh} --all"
        code = [c for c in executed["cells"] if c["cell_type"] == "code"]
        assert all(c["execution_count"] is not None for c in code), f"{path.name}: a code cell was not run"
        outputs = [o for c in code for o in c["outputs"]]
        assert not [o for o in outputs if o["output_type"] == "error"], f"{path.name}: a cell failed"
        widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert not widgets and "widgets" not in executed["metadata"], f"{path.name}: live widgets left in"
        assert figures(executed) >= 1, f"{path.name}: no figure among the outputs"


def readme_row(notebook: str) -> str:
    """The row of README's table of notebooks (between ``<!-- notebook-times -->`` markers) for ``notebook``."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("<!-- notebook-times -->") : text.index("<!-- /notebook-times -->")]
    return next(line for line in table.splitlines() if line.startswith(f"| `{notebook}` |"))


TIME = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(?:CPU[- ])?(min(?:ute)?s?|s|sec(?:ond)?s?|h|hours?)\b")
WORDY_TIME = re.compile(
    r"\b(?:a|an|one|two|three|four|five|ten|a few|several|many)\s+(?:CPU[- ])?(?:minutes?|seconds?|hours?)\b"
    r"|\bhours\b|\bminutes?\b|\bseconds?\b",
    re.IGNORECASE,
)


def times(text: str) -> set[tuple[float, str]]:
    """The durations quoted in ``text`` as ``(number, unit)``: ``"1 min 21 s"`` -> ``{(1, "min"), (21, "s")}``."""
    return {(float(n), unit[0] if unit[0] in "sh" else "min") for n, unit in TIME.findall(text)}


def comments(code: str) -> str:
    import io
    import tokenize

    try:
        return "\n".join(
            t.string for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type == tokenize.COMMENT
        )
    except (tokenize.TokenError, SyntaxError):
        return ""


def test_the_notebooks_run_times_are_the_readmes():
    """Each run time is said once: README's table of notebooks. A notebook's text quotes none (it points to the
    table); a time a code comment quotes (the larger setting's, beside its switch) is one of its row's."""
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        row = readme_row(path.name)
        for i, (kind, source) in enumerate(cells(nb)):
            if kind == "markdown":
                quoted = [m.group(0) for m in (*TIME.finditer(source), *WORDY_TIME.finditer(source))]
                assert not quoted, (
                    f"{path.name}, cell {i} quotes a run time {quoted}: say it in README's table of notebooks only"
                )
            elif kind == "code":
                stray = times(comments(source)) - times(row)
                assert not stray, (
                    f"{path.name}, cell {i}: a comment quotes {sorted(stray)}, which README's table of notebooks "
                    f"does not give for it: {row}"
                )


# --- in a real browser ----------------------------------------------------------------------------------------------


BLOCKED: list[str] = []  # the requests the pages made beyond the local server (cut off)


@pytest.fixture(scope="module")
def browser_page(built, tmp_path_factory):
    """The built site served on 127.0.0.1, and a headless Chromium page that may reach nothing else."""
    from jupyterlab_browser import CHROMIUM, chromium_page

    if not Path(CHROMIUM).exists():
        pytest.skip("browser test not run: Chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("browser test not run: playwright is not installed (pip install -e '.[test]')")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            if not isinstance(sys.exc_info()[1], ConnectionError):  # the browser moving on mid-transfer is normal
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(built)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    root = tmp_path_factory.mktemp("docs-browser")
    try:
        with chromium_page(root) as page:
            page.set_default_timeout(60_000)
            # Hermetic: the page may load from our server only (a CDN, for one, is cut off); what it asked beyond is
            # kept in BLOCKED.
            BLOCKED.clear()

            def route(route):
                if route.request.url.startswith(url) or route.request.url.startswith("data:"):
                    route.continue_()
                else:
                    BLOCKED.append(route.request.url)
                    route.abort()

            page.route("**/*", route)
            yield url, page, root
    finally:
        server.shutdown()
        server.server_close()


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def check_navigation(page, base: str) -> list[str]:
    """The sidebar is visible and lists the site's sections; every link in it resolves. Returns the link texts."""
    sidebar = page.locator(".sidebar-tree")
    assert sidebar.is_visible(), "the navigation sidebar is not visible"
    links = sidebar.locator("a.reference")
    texts = [t.strip() for t in links.all_inner_texts()]
    for section in ("Getting started", "Concepts", "How-to guides", "API reference"):
        assert section in texts, f"{section!r} is not in the navigation: {texts}"
    hrefs = {h.split("#")[0] for h in links.evaluate_all("els => els.map(e => e.href)")}
    broken = [h for h in hrefs if h.startswith(base) and status(h) != 200]
    assert not broken, f"navigation links that do not resolve: {broken}"
    return texts


def test_index_page_renders_text_and_navigation(browser_page):
    url, page, root = browser_page
    page.goto(f"{url}/index.html")
    main = page.locator("article[role=main]")
    assert main.is_visible()
    heading = main.locator("h1").first.inner_text()
    assert heading.strip().startswith("hgkit"), heading
    body = main.inner_text()
    assert "Exact hypergradients of training runs" in body and "hg.Reverse()" in body, body[:500]
    texts = check_navigation(page, url)
    assert len(texts) >= 15, texts
    page.screenshot(path=str(root / "index.png"), full_page=False)
    # Following a link of the navigation opens its page.
    page.locator(".sidebar-tree a.reference", has_text="Concepts").first.click()
    page.wait_for_url(re.compile(r"concepts\.html"))
    assert page.locator("article[role=main] h1").first.inner_text().startswith("Concepts")
    print(f"screenshot: {root / 'index.png'}")


def test_api_page_renders_an_entry_and_navigation(browser_page):
    url, page, root = browser_page
    page.goto(f"{url}/api/hgkit.html#hgkit.HyperOptimizer")
    entry = page.locator("dt[id='hgkit.HyperOptimizer']")
    entry.wait_for(state="visible")
    assert "HyperOptimizer" in entry.inner_text()
    assert "problem" in entry.inner_text(), "the signature is not shown"
    description = entry.locator("xpath=following-sibling::dd[1]")
    assert len(description.inner_text()) > 200, "the docstring is not rendered"
    assert page.locator("dt[id='hgkit.HyperOptimizer.run']").count() == 1, "HyperOptimizer.run has no entry"
    # The table of names at the top links to the entries; the page's table of contents lists them.
    table = page.locator("table.hgkit-names").first
    assert table.is_visible() and table.locator("a[href$='#hgkit.HyperOptimizer']").count() >= 1
    assert page.locator(".toc-tree a[href='#hgkit.HyperOptimizer']").count() == 1
    check_navigation(page, url)
    current = page.locator(".sidebar-tree .current-page > a").first.inner_text()
    assert current.strip() == "hgkit", current
    entry.scroll_into_view_if_needed()
    page.screenshot(path=str(root / "api.png"), full_page=False)
    print(f"screenshot: {root / 'api.png'}")


def rendered_page(page, address: str) -> dict:
    """Open a page and wait until its images have loaded and MathJax has typeset it; what it shows."""
    page.goto(address, wait_until="load")
    if page.locator(".math").count():
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
        page.evaluate("() => MathJax.startup.promise")
    return page.evaluate(
        """() => {
          const main = document.querySelector("article[role=main]");
          const maths = [...main.querySelectorAll(".math")];
          return {
            text: main.innerText,
            images: [...main.querySelectorAll(".cell_output img")].map((i) => ({
              png: i.currentSrc.startsWith("data:image/png;") || new URL(i.currentSrc).pathname.endsWith(".png"),
              width: i.naturalWidth,
            })),
            maths: maths.length,
            typeset: maths.filter((m) => m.querySelector("mjx-container")).length,
            overflowing: [...main.querySelectorAll("pre")].filter((p) => p.scrollWidth > p.clientWidth + 1)
              .map((p) => p.textContent.slice(0, 60)),
          };
        }"""
    )


@pytest.mark.parametrize("name", [p.stem for p in NOTEBOOKS])
def test_notebook_page_shows_its_figures_and_maths_offline(browser_page, name):
    """Every notebook page, opened with the network cut off: at least one PNG figure that loaded, every formula
    typeset by MathJax (no raw ``\\(`` or ``\\[`` left), no code line running out of view, nothing asked of the
    network."""
    url, page, root = browser_page
    BLOCKED.clear()
    shown = rendered_page(page, f"{url}/notebooks/{name}.html")
    pngs = [i for i in shown["images"] if i["png"] and i["width"] > 0]
    assert pngs, f"no figure on the {name} page: {shown['images']}"
    text = "".join(s for kind, s in cells(json.loads((EXECUTED / f"{name}.ipynb").read_text())) if kind == "markdown")
    assert shown["maths"] > 0 or "$" not in text, "the notebook's formulas are not marked as maths on its page"
    assert shown["typeset"] == shown["maths"], f"{shown['maths'] - shown['typeset']} formulas not typeset"
    assert "\\(" not in shown["text"] and "\\[" not in shown["text"], "raw TeX on the page"
    assert not shown["overflowing"], f"code lines out of view: {shown['overflowing']}"
    assert not BLOCKED, f"the page asked the network for {BLOCKED}"
    if name == "quickstart":
        assert shown["maths"] >= 5, "the quickstart's formulas are not on its page"
        page.screenshot(path=str(root / "quickstart.png"), full_page=True)
        print(f"screenshot: {root / 'quickstart.png'}")


def test_concepts_page_typesets_its_maths_offline(browser_page):
    url, page, root = browser_page
    BLOCKED.clear()
    shown = rendered_page(page, f"{url}/concepts.html")
    assert shown["maths"] >= 10 and shown["typeset"] == shown["maths"], shown["maths"] - shown["typeset"]
    assert "\\(" not in shown["text"] and "\\[" not in shown["text"], "raw TeX on the page"
    assert not BLOCKED, f"the page asked the network for {BLOCKED}"


def test_the_test_extra_installs_what_the_docs_extra_does():
    """CI installs only ``.[test]``, and this file builds the site: the ``docs`` extra must be inside ``test``."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras["docs"]) <= set(extras["test"]), set(extras["docs"]) - set(extras["test"])
