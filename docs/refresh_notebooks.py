"""Refresh the documentation site's executed notebooks: ``docs/site/notebooks/NAME.ipynb`` is
``notebooks/NAME.ipynb`` (every cell, as written) with the outputs of a run at the notebook's default size.

Run it as ``bash docs/refresh_notebooks.sh [--all] [--smoke] [NAME ...]``:

* a notebook whose code cells compute what those of its executed copy do (the same code, comments and layout
  aside) only has its text brought over (every cell's source and the metadata; the outputs are kept): seconds;
* one whose code changed (or that has no copy yet) is executed anew, at its default size, as a user runs it (a
  kernel of this interpreter with inline figures, in a temporary folder, so what it writes stays out of the
  checkout): minutes for all eight (README.md, section Documentation, gives the time);
* ``--all`` executes every notebook (after a change to what hgkit prints or draws), ``NAME ...`` executes those;
  ``--smoke`` runs at smoke size (``HGKIT_SMOKE=1``) to try the pipeline: ``tests/test_docs.py`` refuses such
  copies, so they are never the site's.

A live widget cannot run on a static page: each widget output is replaced by a static picture of the widget as
it stood at the end of the run (:func:`static_widget`): the dashboard's last plot and values, the classroom's
figure. The widget state itself is dropped.

``tests/test_docs.py`` checks that every copy's cells are its notebook's (so a change to a notebook fails the
tests until this is run), that it ran at default size, and that it holds figures and no widget state.
"""

from __future__ import annotations

import argparse
import copy
import html
import io
import json
import os
import sys
import tempfile
import time
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "notebooks"
EXECUTED = ROOT / "docs" / "site" / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
METADATA_KEY = "hgkit_docs"  # the copy's notebook metadata: {"size": "default" | "smoke", "source": ...}
CELL_TIMEOUT = 1800  # seconds: a default-size cell takes a minute or two on 2 idle cores, more on busy ones


# --- comparing a notebook and its copy -------------------------------------------------------------------------------


def source_of(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def cells_of(nb: dict, kind: str | None = None) -> list[tuple[str, str]]:
    """``(cell_type, source)`` of every cell (of one kind), in order."""
    return [(c["cell_type"], source_of(c)) for c in nb["cells"] if kind is None or c["cell_type"] == kind]


def code_tokens(source: str) -> list[tuple[int, str]] | str:
    """What a code cell computes: its Python tokens without comments and layout, so that a change to a comment or
    to the formatting is not a change of code (the source itself when it does not tokenize, e.g. a cell magic)."""
    try:
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        return [(t.type, t.string) for t in tokens if t.type not in (tokenize.COMMENT, tokenize.NL)]
    except (tokenize.TokenError, SyntaxError):
        return source


def same_code(a: dict, b: dict) -> bool:
    """Whether two notebooks' code cells compute the same (:func:`code_tokens`)."""
    return [code_tokens(s) for _, s in cells_of(a, "code")] == [code_tokens(s) for _, s in cells_of(b, "code")]


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def write(path: Path, nb: dict) -> None:
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def with_outputs_of(source: dict, executed: dict) -> dict:
    """``source``'s cells and metadata, each code cell with the outputs of the same code cell of ``executed``
    (whose code cells must compute what the source's do, in order: :func:`same_code`)."""
    assert same_code(source, executed)
    merged = copy.deepcopy(source)
    ran = iter(c for c in executed["cells"] if c["cell_type"] == "code")
    for cell in merged["cells"]:
        if cell["cell_type"] == "code":
            done = next(ran)
            cell["outputs"], cell["execution_count"] = done["outputs"], done["execution_count"]
    merged["metadata"][METADATA_KEY] = executed["metadata"][METADATA_KEY]
    return merged


# --- widgets as static pictures --------------------------------------------------------------------------------------

BOXES = {"VBoxModel": "column", "BoxModel": "column", "GridBoxModel": "column", "HBoxModel": "row"}
CONTROLS_WITH_VALUE = (
    "SliderModel",
    "TextModel",
    "DropdownModel",
    "ToggleButtonsModel",
    "RadioButtonsModel",
    "SelectModel",
    "SelectMultipleModel",
    "CheckboxModel",
)


def _image(state: dict) -> str:
    data = next((b["data"] for b in state.get("buffers", []) if b["path"] == ["value"]), None)
    if not data:
        return ""
    fmt = state["state"].get("format", "png")
    width = state["state"].get("width")
    size = f" width='{html.escape(str(width))}'" if width else ""
    return f"<img src='data:image/{html.escape(fmt)};base64,{data}' alt='the widget&#39;s plot'{size}>"


def _output(output: dict) -> str:
    data = output.get("data", {})
    if "image/png" in data:
        return f"<img src='data:image/png;base64,{''.join(data['image/png']).strip()}' alt='a figure'>"
    if "text/html" in data:
        return "".join(data["text/html"])
    text = "".join(output.get("text", "")) or "".join(data.get("text/plain", ""))
    return f"<pre>{html.escape(text)}</pre>" if text.strip() else ""


def _render(model_id: str, models: dict) -> str:
    """Static HTML of one widget: boxes laid out as they are, HTML and labels as written, images and Output
    widgets' figures as images, a slider (or other value control) as its description and value; buttons and
    other controls that mean nothing without a kernel are left out."""
    widget = models.get(model_id.removeprefix("IPY_MODEL_"))
    if widget is None:
        return ""
    name, state = widget["model_name"], widget["state"]
    if name in BOXES or name in ("TabModel", "AccordionModel", "StackModel"):
        parts = [_render(child, models) for child in state.get("children", [])]
        direction = BOXES.get(name, "column")
        inner = "".join(f"<div>{p}</div>" for p in parts if p)
        return f"<div style='display:flex;flex-direction:{direction};gap:0.4em;flex-wrap:wrap'>{inner}" + "</div>"
    if name in ("HTMLModel", "HTMLMathModel"):
        return state.get("value", "")
    if name == "LabelModel":
        return html.escape(str(state.get("value", "")))
    if name == "ImageModel":
        return _image(widget)
    if name == "OutputModel":
        return "".join(_output(o) for o in state.get("outputs", []))
    if name in ("FloatProgressModel", "IntProgressModel"):
        return f"<progress value='{state.get('value', 0)}' max='{state.get('max', 100)}'></progress>"
    if name.endswith(CONTROLS_WITH_VALUE):
        value = state.get("value")
        if "_options_labels" in state:  # a choice: its state holds the index of what is chosen
            chosen = state.get("index")
            chosen = chosen if isinstance(chosen, list) else [] if chosen is None else [chosen]
            value = ", ".join(state["_options_labels"][i] for i in chosen)
        elif isinstance(value, list):  # a range slider
            value = " – ".join(map(str, value))
        label = f"{state['description']} = " if state.get("description") else ""
        return f"<span class='hgkit-widget-value'>{html.escape(label)}{html.escape(str(value))}</span>"
    return ""


NOTE = (
    "<p class='hgkit-widget-note'><i>A live widget, shown as it stood when the notebook finished running (run the"
    " notebook in Jupyter to use it).</i></p>"
)


def static_widget(output: dict, models: dict) -> dict | None:
    """A widget output as a static ``text/html`` display of the widget at the end of the run, or None when it
    shows nothing without a kernel."""
    model_id = output["data"][WIDGET_VIEW]["model_id"]
    rendered = _render(model_id, models)
    if not rendered.strip():
        return None
    return {
        "output_type": "display_data",
        "metadata": {},
        "data": {
            "text/html": f"<div class='hgkit-static-widget'>{rendered}{NOTE}</div>",
            "text/plain": "(a live widget, shown as it stood at the end of the run)",
        },
    }


def freeze_widgets(nb: dict) -> dict:
    """Every widget output replaced by its static picture (:func:`static_widget`); the widget state dropped."""
    models = nb["metadata"].pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        outputs = []
        for output in cell["outputs"]:
            if WIDGET_VIEW in output.get("data", {}):
                output = static_widget(output, models)
            if output is not None:
                outputs.append(output)
        cell["outputs"] = outputs
    return nb


# --- executing -------------------------------------------------------------------------------------------------------


def execute(path: Path, smoke: bool) -> dict:
    """``path`` run top to bottom in a fresh kernel of this interpreter (in a temporary folder, with Jupyter's and
    IPython's folders there too), at its default size or, with ``smoke``, at ``HGKIT_SMOKE=1``."""
    import nbformat
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory(prefix="hgkit-refresh-") as tmp:
        tmp = Path(tmp)
        spec = tmp / "jupyter" / "kernels" / "hgkit-docs"
        spec.mkdir(parents=True)
        env = {
            # What a notebook server gives a kernel: inline figures; this checkout's hgkit first.
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            "HGKIT_SMOKE": "1" if smoke else "0",
        }
        kernel = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "hgkit",
            "language": "python",
            "env": env,
        }
        (spec / "kernel.json").write_text(json.dumps(kernel))
        os.environ["JUPYTER_PATH"] = str(tmp / "jupyter")
        for name in ("JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR"):
            (tmp / name.lower()).mkdir()
            os.environ[name] = str(tmp / name.lower())
        profile = tmp / "ipythondir" / "profile_default"
        profile.mkdir(parents=True)
        (profile / "ipython_kernel_config.py").write_text('c.InteractiveShell.colors = "nocolor"\n')
        work = tmp / "work"  # the notebook's folder: what it writes (results/...) is thrown away
        work.mkdir()
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            kernel_name="hgkit-docs",
            timeout=CELL_TIMEOUT,
            record_timing=False,
            resources={"metadata": {"path": str(work)}},
        )
        client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    nb = json.loads(nbformat.writes(nb))
    nb["metadata"]["kernelspec"] = read(path)["metadata"].get("kernelspec", nb["metadata"]["kernelspec"])
    return nb


def refresh(name: str, *, force: bool, smoke: bool) -> str:
    source_path, copy_path = SOURCE / f"{name}.ipynb", EXECUTED / f"{name}.ipynb"
    source = read(source_path)
    if not force and copy_path.exists():
        executed = read(copy_path)
        if same_code(executed, source):
            merged = with_outputs_of(source, executed)
            if merged != executed:
                write(copy_path, merged)
                return "text brought over"
            return "up to date"
    start = time.monotonic()
    nb = freeze_widgets(execute(source_path, smoke))
    nb["metadata"][METADATA_KEY] = {
        "size": "smoke" if smoke else "default",
        "source": f"notebooks/{name}.ipynb",
        "refresh": "bash docs/refresh_notebooks.sh",
    }
    write(copy_path, with_outputs_of(source, nb))
    return f"executed in {time.monotonic() - start:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to refresh (default: all of notebooks/)")
    parser.add_argument("--all", action="store_true", help="execute even those whose code did not change")
    parser.add_argument("--smoke", action="store_true", help="run at HGKIT_SMOKE=1 (to try the pipeline only)")
    args = parser.parse_args(argv)
    names = args.names or sorted(p.stem for p in SOURCE.glob("*.ipynb"))
    EXECUTED.mkdir(parents=True, exist_ok=True)
    for stale in sorted(set(p.stem for p in EXECUTED.glob("*.ipynb")) - {p.stem for p in SOURCE.glob("*.ipynb")}):
        (EXECUTED / f"{stale}.ipynb").unlink()
        print(f"{stale}: removed (no notebooks/{stale}.ipynb)", flush=True)
    for name in names:
        print(f"{name}: ...", flush=True)
        print(f"{name}: {refresh(name, force=args.all or bool(args.names), smoke=args.smoke)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
