"""The Sphinx extension behind hgkit's documentation site: the API reference generated from ``__all__``, the
README's commands read from the README, and cross-references to re-exported names resolved to where they are
documented.

* ``.. hgkit-module:: hgkit.hypergrad`` documents one public module: its docstring, a table of its public names
  (``__all__``; for a module without one, the classes and functions it defines) and, below, the full entry of
  each name that is documented *here*. Every object is documented once, at its first public home in
  :func:`public_modules` order (``hgkit`` first, so ``hgkit.Reverse`` rather than
  ``hgkit.hypergrad.reverse.Reverse``); elsewhere its row in the table links to that entry. A name added to an
  ``__all__`` appears without editing any page. ``:group:`` (used for ``hgkit`` itself) splits the entries into
  sections by the module that defines them.
* ``.. hgkit-readme-block:: main-command`` is the fenced block after ``<!-- main-command -->`` in README.md (the
  same marker contract as ``.ci/run`` and ``tests/test_packaging.py``); ``.. hgkit-readme-block:: ## Quickstart``
  is the first fenced block after that heading.
* A reference to a public re-export (``hgkit.hypergrad.forward.Forward``, ``hgkit.history.RunInfo.of``, or a
  name relative to the current module) resolves to the documented entry of the same object. A reference to an
  object outside hgkit that exists (``jax.Array``, ``optax.GradientTransformation``: there is no network for
  intersphinx) or to an existing private hgkit object (``hgkit._checkpoint``) renders as code without a link. Any
  other unresolved reference stays a warning, which the build (``-W``) turns into an error.
* RESULTS.md and BENCHMARKS.md are pages of the site (included whole); their links to each other go to the pages.
* At the end of reading, a public module of hgkit that no ``hgkit-module`` directive documents is a warning.
* A NamedTuple's fields are documented in words, never as Python's "Alias for field number N": a field with a
  trailing comment in its class (``value: jax.Array  # the outer objective``) gets that comment as its entry; a
  field that the class docstring's ``Attributes:`` section describes, or that has no comment, gets no entry of its
  own (the class's signature lists every field, and the docstring describes them).
"""

from __future__ import annotations

import ast
import builtins
import enum
import functools
import importlib
import inspect
import io
import pkgutil
import re
import textwrap
import tokenize
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

PACKAGE = "hgkit"
ROOT = Path(__file__).resolve().parents[3]

# Section titles of the top-level page (``:group:``), by the module that defines the objects; other modules get
# their own name as the title, so a new module needs no edit here.
GROUPS = {
    "hgkit.problem": "The problem and the training run",
    "hgkit.hypergrad": "Hypergradients: entry points, methods, results and failures",
    "hgkit.outer": "The optimization loop",
    "hgkit.history": "Records and callbacks",
    "hgkit._checkpoint": "Checkpoints",
    "hgkit.hparams": "Hyperparameters",
    "hgkit._tree": "Types",
}


# --- what is public ------------------------------------------------------------------------------------------------


def is_private(dotted: str) -> bool:
    return any(part.startswith("_") for part in dotted.split("."))


@functools.cache
def public_modules() -> list[str]:
    """``hgkit`` and every module below it with no ``_``-prefixed part, ``hgkit`` first, then alphabetically."""
    package = importlib.import_module(PACKAGE)
    found = [info.name for info in pkgutil.walk_packages(package.__path__, PACKAGE + ".")]
    return [PACKAGE] + sorted(name for name in found if not is_private(name))


@functools.cache
def public_names(modname: str) -> list[str]:
    """A module's ``__all__``; without one, the public classes and functions it defines and the UPPER_CASE
    constants it assigns, in source order."""
    module = importlib.import_module(modname)
    if hasattr(module, "__all__"):
        return list(module.__all__)
    assigned = set()
    for statement in ast.parse(inspect.getsource(module)).body:
        targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
        assigned |= {t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper()}
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (
            ((inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == modname)
            or (name in assigned and not inspect.ismodule(obj))
        )
    ]


@functools.cache
def homes() -> dict[int, str]:
    """``id(object) -> "module.name"``, the object's first public home; modules are left out (each has its own
    section)."""
    home: dict[int, str] = {}
    for modname in public_modules():
        module = importlib.import_module(modname)
        for name in public_names(modname):
            obj = getattr(module, name)
            if not inspect.ismodule(obj):
                home.setdefault(id(obj), f"{modname}.{name}")
    return home


def locate(dotted: str):
    """The object a dotted path names (importing the longest module prefix), or raise LookupError."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        except Exception as e:  # a module that fails to import is not a place to look
            raise LookupError(dotted) from e
        for part in parts[i:]:
            try:
                obj = getattr(obj, part)
            except Exception as e:
                raise LookupError(dotted) from e
        return obj
    if len(parts) == 1 and hasattr(builtins, dotted):
        return getattr(builtins, dotted)
    raise LookupError(dotted)


# --- the API directive ---------------------------------------------------------------------------------------------


def entry_directive(obj) -> tuple[str, list[str]]:
    """The autodoc directive and options for one object."""
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "autoexception", [":members:", ":show-inheritance:"]
        if issubclass(obj, enum.Enum):
            return "autoclass", [":members:", ":undoc-members:", ":member-order: bysource"]
        return "autoclass", [":members:", ":member-order: bysource"]
    if inspect.isroutine(obj) or (callable(obj) and hasattr(obj, "__wrapped__")):
        return "autofunction", []
    return "py:data", []  # a constant: written out by data_entry (autodata would show its type's docstring)


def data_entry(modname: str, name: str, obj) -> list[str]:
    """A constant's entry: its type, its value when short, and its ``#:`` doc comment if it has one (looked for in
    the module and, for a re-export, in the modules below it that assign the same name)."""
    value = repr(obj)
    kind = "type alias" if getattr(obj, "__module__", None) == "typing" else type(obj).__name__
    lines = [f".. py:data:: {name}", f"   :module: {modname}", f"   :type: {kind}"]
    if len(value) <= 80 and "\n" not in value:
        lines.append(f"   :value: {value}")
    lines.append("")
    for candidate in [modname] + [m for m in public_modules() if m.startswith(modname + ".")] + private_modules():
        try:
            docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
        except PycodeError:
            continue
        if ("", name) in docs and getattr(importlib.import_module(candidate), name, None) is obj:
            lines += [f"   {line}" for line in docs[("", name)]]
            break
    return lines + [""]


@functools.cache
def private_modules() -> list[str]:
    package = importlib.import_module(PACKAGE)
    return sorted(i.name for i in pkgutil.walk_packages(package.__path__, PACKAGE + ".") if is_private(i.name))


def summary(obj) -> str:
    """The first sentence of an object's docstring (its type, for a constant), for the table of names."""
    if inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj):
        doc = inspect.getdoc(obj) or ""
        first = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
        for match in re.finditer(r"\.(\s|$)", first):
            head = first[: match.start() + 1]
            if head.count("``") % 2 == 0 and head.count("`") % 2 == 0 and not head.endswith(("e.g.", "i.e.")):
                first = head
                break
        lines = [first]
        escape_bars(None, None, None, None, None, lines)
        return lines[0] or "\\"
    return f"constant (``{type(obj).__name__}``)"


BARS = re.compile(r"(?<![\\\w`|])\|([^|\s`][^|`]*?)\|(?![\w`|])")


def escape_bars(app, what, name, obj, options, lines):
    """Docstrings write sizes as ``|s|`` (the training state's); in reST that is a substitution reference, so the
    bars become ``∣`` (U+2223, one column wide like ``|``, so that simple tables keep their alignment), except
    inside ``literals``, literal blocks and doctests."""
    literal_indent = None
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if not line.strip() or indent > literal_indent:
                continue
            literal_indent = None
        if line.rstrip().endswith("::"):
            literal_indent = indent
        if line.lstrip().startswith((">>>", "...")):
            continue
        parts = line.split("``")
        parts[::2] = [BARS.sub("\u2223\\1\u2223", part) for part in parts[::2]]
        lines[i] = "``".join(parts)


def join_attribute_names(app, what, name, obj, options, lines):
    """In a Google-style ``Attributes:`` section, ``a, b: text`` documents two attributes at once; Sphinx would read
    the first word of ``:ivar a, b:`` as a type, so the names are joined without spaces (``a,b``)."""
    section = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not line.startswith(" "):
            section = stripped if stripped.endswith(":") else None
        elif section == "Attributes:":
            match = re.match(r"^(\s+)(\w+(?:,\s*\w+)+)(\s*(?:\(.*?\))?:\s)", line)
            indent = len(match.group(1)) if match else 0
            if match and indent == len(line) - len(line.lstrip()) and indent <= 4:
                names = re.sub(r",\s*", ",", match.group(2))
                lines[i] = match.group(1) + names + match.group(3) + line[match.end() :]


# --- NamedTuple fields -----------------------------------------------------------------------------------------------

FIELD_STUB = re.compile(r"^Alias for field number \d+$")


def is_field_stub(obj) -> bool:
    return bool(FIELD_STUB.match((getattr(obj, "__doc__", None) or "").strip()))


@functools.cache
def namedtuple_fields() -> dict[int, tuple[type, str]]:
    """``id(field accessor) -> (class, field)`` for the fields of every NamedTuple of the public modules (each
    NamedTuple class has accessor objects of its own)."""
    found: dict[int, tuple[type, str]] = {}
    for modname in public_modules():
        module = importlib.import_module(modname)
        for name in public_names(modname):
            cls = getattr(module, name)
            if inspect.isclass(cls) and issubclass(cls, tuple) and hasattr(cls, "_fields"):
                for field in cls._fields:
                    accessor = inspect.getattr_static(cls, field, None)
                    if accessor is not None:
                        found.setdefault(id(accessor), (cls, field))
    return found


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """The trailing comments of a NamedTuple's fields in its source (``name: type  # comment``); comment-only lines
    right below a commented field continue its comment."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(token.start[0])
    body = ast.parse(source).body[0].body
    fields = [s for s in body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
    found = {}
    for statement in fields:
        lines = [comments[n] for n in range(statement.lineno, statement.end_lineno + 1) if n in comments]
        if not lines:
            continue
        n = statement.end_lineno + 1
        while n in comments and n not in code_lines:
            lines.append(comments[n])
            n += 1
        found[statement.target.id] = " ".join(lines)
    return found


def attributes_section(cls: type) -> set[str]:
    """The names that the class docstring's Google-style ``Attributes:`` section describes."""
    names: set[str] = set()
    inside = False
    for line in (inspect.getdoc(cls) or "").splitlines():
        if line and not line.startswith(" "):
            inside = line.strip() == "Attributes:"
            continue
        match = re.match(r"^ {4}(\w+(?:,\s*\w+)*)\s*(?:\(.*?\))?:", line) if inside else None
        if match:
            names |= {n.strip() for n in match.group(1).split(",")}
    return names


def skip_field_stubs(app, what, name, obj, skip, options):
    """``autodoc-skip-member``: a NamedTuple field without a comment of its own, or one that the class docstring's
    ``Attributes:`` section describes, gets no entry (the class's signature lists it)."""
    if skip or what != "class" or not is_field_stub(obj):
        return None
    owner = namedtuple_fields().get(id(obj))
    if owner is None:
        return True  # a field of a NamedTuple outside the public modules: nothing to say about it
    cls, field = owner
    if field in attributes_section(cls) or field not in field_comments(cls):
        return True
    return None


def describe_fields(app, what, name, obj, options, lines):
    """``autodoc-process-docstring``: a NamedTuple field's entry says what its trailing comment says (as written:
    this runs after napoleon)."""
    if not lines or not FIELD_STUB.match(" ".join(lines).strip()):
        return
    owner = namedtuple_fields().get(id(obj))
    comment = field_comments(owner[0]).get(owner[1]) if owner else None
    lines[:] = [comment, ""] if comment else []
    escape_bars(app, what, name, obj, options, lines)


class ModuleDirective(SphinxDirective):
    """``.. hgkit-module:: NAME``: a public module's docstring, a table of its public names, and the entries of
    those documented here."""

    required_arguments = 1
    option_spec = {"group": directives.flag}

    def run(self) -> list[nodes.Node]:
        modname = self.arguments[0]
        module = importlib.import_module(modname)
        # Where each object is documented depends on every public module's __all__: a change to any of them
        # re-reads every API page.
        for public in public_modules():
            self.env.note_dependency(importlib.import_module(public).__file__)
        self.env.note_dependency(__file__)
        modules = self.env.__dict__.setdefault("hgkit_modules", {})
        modules.setdefault(self.env.docname, set()).add(modname)
        home = homes()
        names = list(public_names(modname))
        lines = [f".. automodule:: {modname}", ""]
        if names:
            lines += [".. list-table::", "   :class: hgkit-names", "   :widths: 30 70", ""]
            for name in names:
                obj = getattr(module, name)
                target = obj.__name__ if inspect.ismodule(obj) else home.get(id(obj), f"{modname}.{name}")
                lines += [f"   * - :py:obj:`{name} <{target}>`", f"     - {summary(obj)}"]
            lines.append("")
        here = [n for n in names if home.get(id(getattr(module, n))) == f"{modname}.{n}"]
        groups: dict[str, list[str]] = {}
        for name in here:
            owner = getattr(getattr(module, name), "__module__", None) or modname
            key = next((g for g in GROUPS if owner == g or owner.startswith(g + ".")), owner)
            groups.setdefault(key if "group" in self.options else "", []).append(name)
        for key, members in groups.items():
            if key:
                title = GROUPS.get(key, f"From ``{key}``")
                lines += [title, "~" * (len(title) + 4), ""]
            for name in members:
                directive, options = entry_directive(getattr(module, name))
                if directive == "py:data":
                    lines += data_entry(modname, name, getattr(module, name))
                else:
                    lines += [f".. {directive}:: {modname}.{name}", *(f"   {o}" for o in options), ""]
        content = StringList(lines, source=f"<hgkit-module {modname}>")
        node = nodes.section() if "group" in self.options else nodes.container()
        nested_parse_with_titles(self.state, content, node)
        return node.children


# --- README blocks -------------------------------------------------------------------------------------------------


def readme_block(marker: str) -> tuple[str, str]:
    """The language and text of the fenced block after ``<!-- marker -->`` (or after the heading ``marker``)."""
    text = (ROOT / "README.md").read_text()
    anchor = marker if marker.startswith("#") else f"<!-- {marker} -->"
    if marker.startswith("#"):
        found = re.search(rf"^{re.escape(marker)}\s*$", text, re.MULTILINE)
        start = found.end() if found else -1
    else:
        start = text.find(anchor)
    if start < 0:
        raise ValueError(f"README.md has no {anchor!r}")
    fence = re.search(r"^```(\w*)\n(.*?)^```", text[start:], re.MULTILINE | re.DOTALL)
    if fence is None:
        raise ValueError(f"README.md has no fenced block after {anchor!r}")
    return fence.group(1) or "text", fence.group(2).rstrip("\n")


class ReadmeBlockDirective(SphinxDirective):
    """``.. hgkit-readme-block:: MARKER``: a fenced block of README.md, verbatim, as a code block."""

    required_arguments = 1
    final_argument_whitespace = True

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(str(ROOT / "README.md"))
        try:
            language, code = readme_block(self.arguments[0])
        except ValueError as e:
            logger.warning(str(e), location=self.get_location())
            return []
        block = nodes.literal_block(code, code, language=language)
        block["classes"].append(f"hgkit-readme-{re.sub(r'[^a-z]+', '-', self.arguments[0].lower()).strip('-')}")
        self.set_source_info(block)
        return [block]


# --- references ----------------------------------------------------------------------------------------------------


_DOCUMENTED: dict[int, str] = {}


def _documented(env) -> dict[int, str]:
    """``id(object) -> documented name`` over the Python domain's entries (aliases last), built once per write."""
    cache = _DOCUMENTED
    if not cache:
        objects = env.get_domain("py").objects
        for name, _ in sorted(objects.items(), key=lambda item: (item[1].aliased, len(item[0]))):
            try:
                cache.setdefault(id(locate(name)), name)
            except LookupError:
                pass
    return cache


def _canonical(env, dotted: str) -> str | None:
    """The documented name of what ``dotted`` names: itself, or the documented entry of the same object, or of its
    longest prefix that is documented followed by the rest (``hgkit.history.RunInfo.of`` -> ``hgkit.RunInfo.of``)."""
    objects = env.get_domain("py").objects
    if dotted in objects:
        return dotted
    documented = _documented(env)
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = locate(".".join(parts[:i]))
        except LookupError:
            continue
        if inspect.ismodule(obj) or isinstance(obj, (int, float, str, bool, type(None))):
            continue
        name = documented.get(id(obj))
        if name is not None:
            candidate = ".".join([name, *parts[i:]])
            if candidate in objects:
                return candidate
    return None


ALIASES = {"np": "numpy", "jnp": "jax.numpy", "pd": "pandas", "plt": "matplotlib.pyplot"}
UNLINKED: set[str] = set()  # hgkit objects referenced by a docstring but not in the reference (private or unexported)


def resolve_reference(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    module, cls = node.get("py:module"), node.get("py:class")
    candidates = [target]
    if module:
        candidates.insert(0, f"{module}.{target}")
        context = f"{module}.{cls}" if cls else module
        try:  # the module that defines the documented object: its docstring's names are relative to it
            defined_in = getattr(locate(context), "__module__", None) if cls else None
        except LookupError:
            defined_in = None
        if defined_in and defined_in != module:
            candidates.append(f"{defined_in}.{target}")
        if cls:
            candidates.insert(0, f"{module}.{cls}.{target}")
    for candidate in candidates:
        if candidate.split(".")[0] == PACKAGE:
            name = _canonical(env, candidate)
            if name is not None:
                return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, "obj", name, node, contnode)
    for candidate in reversed(candidates):  # the name as written first: ``jax.Array`` is jax's, wherever it is
        head, _, rest = candidate.partition(".")
        candidate = f"{ALIASES[head]}.{rest}" if head in ALIASES and rest else candidate
        try:
            obj = locate(candidate)
        except LookupError:
            if candidate.split(".")[0] not in (PACKAGE, *ALIASES.values()) and "." in candidate:
                try:  # an annotation's real class, as jax.jaxlib._jax.Array: its package is enough
                    importlib.import_module(candidate.split(".")[0])
                    return contnode
                except ImportError:
                    pass
            continue
        origin = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None)
        if isinstance(origin, str) and origin.split(".")[0] == PACKAGE:
            UNLINKED.add(candidate)
        return contnode  # exists, outside the reference (no intersphinx offline) or not public: code, no link
    return None


def report_unlinked(app, exception):
    if exception is None and UNLINKED:
        logger.info(
            "hgkit objects referenced but not in the API reference (shown as code): %s", ", ".join(sorted(UNLINKED))
        )


# The repository's Markdown files that are pages of the site: in an included file, a link between them goes to the page.
PAGES = {"RESULTS.md": "results.md", "BENCHMARKS.md": "benchmarks.md", "README.md": "index.md"}


def rewrite_included_links(app, relative_path, parent_docname, content):
    """``include-read``: in RESULTS.md and BENCHMARKS.md, ``[text](BENCHMARKS.md)`` becomes a link to its page."""
    if Path(relative_path).name in PAGES:
        for source, page in PAGES.items():
            content[0] = re.sub(rf"\]\({re.escape(source)}(#[^)]*)?\)", rf"]({page}\1)", content[0])


def check_modules_documented(app, env):
    _DOCUMENTED.clear()  # the entries are final now; the references are resolved next
    documented = set().union(*getattr(env, "hgkit_modules", {}).values())
    for modname in public_modules():
        if modname not in documented:
            logger.warning(
                "public module %s is not in the API reference: add '.. hgkit-module:: %s' to a page in docs/site/api/",
                modname,
                modname,
                type="hgkit",
                subtype="api",
            )


def merge_info(app, env, docnames, other):
    env.__dict__.setdefault("hgkit_modules", {}).update(getattr(other, "hgkit_modules", {}))


def purge(app, env, docname):
    getattr(env, "hgkit_modules", {}).pop(docname, None)


def forget_modules(app):
    """A new build (or a rebuild in the same process) looks at the modules afresh."""
    for cached in (public_modules, public_names, homes, private_modules, namedtuple_fields, field_comments):
        cached.cache_clear()
    UNLINKED.clear()


def setup(app):
    app.connect("builder-inited", forget_modules)
    app.add_directive("hgkit-module", ModuleDirective)
    app.add_directive("hgkit-readme-block", ReadmeBlockDirective)
    # After napoleon, which would read "int32: the first step ..." as a type and its description.
    app.connect("autodoc-process-docstring", describe_fields, priority=600)
    app.connect("autodoc-skip-member", skip_field_stubs)
    app.connect("autodoc-process-docstring", join_attribute_names, priority=400)  # before napoleon (500)
    app.connect("autodoc-process-docstring", escape_bars, priority=400)
    app.connect("missing-reference", resolve_reference, priority=900)
    app.connect("env-check-consistency", check_modules_documented)
    app.connect("env-merge-info", merge_info)
    app.connect("env-purge-doc", purge)
    app.connect("include-read", rewrite_included_links)
    app.connect("build-finished", report_unlinked)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
