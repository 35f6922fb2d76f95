"""The package's import graph, read from the source: no cycles, no private names across modules,
and the core pipeline never imports the applications built on it (all of them in ``apps/``)."""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "avarnet"
# The applications (in ``apps/``), each above the core and above the applications listed before it;
# then the command line over them all.
APPS = (
    "apps",
    "apps.ablate",
    "apps.xdv",
    "apps.demo",
    "apps.extract_ray",
    "apps.quantize",
    "apps.bench",
    "apps.serve",
    "cli",
    "__main__",
)
FRONTS = ("cli", "__main__")  # the command line: above the applications, outside ``apps/``
# The core, bottom first: a module imports only modules listed before it (and never an application).
CORE = (
    "errors",
    "redact",
    "progress",
    "io",
    "gate",
    "config",
    "runtime",
    "parallel",
    "media",
    "encoders",
    "features",
    "store",
    "data",
    "models",
    "metrics",
    "plots",
    "decode",
    "extract",
    "alerts",
    "checkpoint",
    "train",
    "inference",
    "report",
    "evaluate",
    "stream",
    "predict",
    "synth",
    "export",
    "weak",
)
LAYERS = CORE + APPS  # bottom first
MAX_FUNCTION_LINES = 120
# Functions still over MAX_FUNCTION_LINES, each to be split (then removed from here).
LONG_FUNCTIONS: set[tuple[str, str]] = set()
MAX_CLI_MODULE_LINES = 300  # the command line: one module per command group, each readable whole


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


@functools.cache
def parse(path: Path) -> ast.Module:
    """A source file's syntax tree, read once for all the tests here (which only walk it)."""
    return ast.parse(path.read_text(), str(path))


def resolve(mod: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict[str, Path]) -> dict[str, set[tuple[str, str | None]]]:
    """module -> {(imported module, imported name or None)} for avarnet's own modules."""
    out: dict[str, set[tuple[str, str | None]]] = {}
    for mod, path in mods.items():
        tree = parse(path)
        edges: set[tuple[str, str | None]] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges |= {(a.name, None) for a in node.names if a.name.startswith("avarnet")}
            elif isinstance(node, ast.ImportFrom):
                target = resolve(mod, node, path.name == "__init__.py")
                if not target.startswith("avarnet"):
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    edges.add((sub, None) if sub in mods else (target, a.name))
        out[mod] = {(t, n) for t, n in edges if t != mod}
    return out


def owner(name: str, mods: dict[str, Path]) -> str:
    while name not in mods and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_no_private_name_crosses_a_module_boundary():
    mods = modules()
    bad = [
        f"{mod} imports {target}.{name}"
        for mod, edges in imports(mods).items()
        for target, name in edges
        if name and name.startswith("_") and not name.startswith("__")
    ]
    assert not bad, "\n".join(sorted(bad))


def test_import_graph_has_no_cycle():
    mods = modules()
    graph = {m: {owner(t, mods) for t, _ in e} - {m} for m, e in imports(mods).items()}
    # A package's __init__ re-exporting its children is not a cycle of the design.
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if seen.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in seen:
                visit(t)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m)


def test_core_never_imports_applications():
    mods = modules()
    bad = []
    for mod, edges in imports(mods).items():
        top = mod.split(".")[1] if "." in mod else ""
        if top not in CORE:
            continue
        for target, _ in edges:
            t = owner(target, mods).split(".")
            if len(t) > 1 and t[1] in ("apps", *FRONTS):
                bad.append(f"{mod} imports {'.'.join(t)}")
    assert not bad, "\n".join(sorted(bad))


def test_applications_live_in_one_package():
    """Every module is core, an application under ``apps/``, or the command line."""
    tops = {m.split(".")[1] for m in modules() if "." in m}
    assert tops - set(CORE) == {"apps", *FRONTS}
    assert all(a.startswith("apps") for a in APPS if a not in FRONTS)
    listed = {a.split(".")[1] for a in APPS if a.startswith("apps.")}
    present = {m.split(".")[2] for m in modules() if m.startswith("avarnet.apps.")}
    assert present == listed, f"apps/ holds {sorted(present)}, APPS lists {sorted(listed)}"


def test_live_library_leaves_presentation_to_the_command_line():
    """The stream package prints nothing and installs no signal handler (the command line's
    stream view does both)."""
    bad = []
    for path in sorted((PKG / "stream").rglob("*.py")):
        tree = parse(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id in ("print", "input"):
                    bad.append(f"{path.name}:{node.lineno} calls {node.func.id}()")
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "signal" in names or "sys" in names:
                    bad.append(f"{path.name}:{node.lineno} imports signal/sys")
    assert not bad, "\n".join(bad)
    presentation = parse(PKG / "cli" / "stream_view.py")
    defined = {n.name for n in presentation.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}
    assert {"LiveView", "StreamOutput", "stop_on_sigint", "summary_text"} <= defined


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# Messages still naming options, in modules that own them (each listed exactly).
NAMED_OPTIONS: set[tuple[str, str]] = set()  # (file, message) allowed to name an option


def library_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal that is not a docstring; f-string holes read {}."""
    tree = parse(path)
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            skip.add(id(body[0].value))
        if isinstance(node, ast.JoinedStr):
            skip |= {id(v) for v in node.values}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            out.append((node.lineno, text))
    return out


def test_library_messages_name_no_command_line_option():
    """Only the command line names its options; a command quoted in backticks may have flags."""
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        if path.relative_to(PKG).parts[0] == "cli":
            continue
        for line, text in library_strings(path):
            plain = re.sub(r"`[^`]*`", "", text)
            if FLAG.search(plain) and (path.name, text) not in NAMED_OPTIONS:
                bad.append(f"{path.relative_to(PKG)}:{line}: {text[:80]!r}")
    assert not bad, "\n".join(bad)


def test_training_on_stored_features_does_not_load_the_backbone_libraries():
    """`train`, `evaluate` and weak training read feature stores: importing them must not pull in
    transformers (devices live in `runtime`, not in `encoders`)."""
    code = (
        "import sys, avarnet.train, avarnet.evaluate, avarnet.weak, avarnet.inference; "
        "print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_decoding_and_writing_processes_import_neither_torch_nor_transformers():
    """A decoding worker and a Ray decoding or writing task import `decode`, `store` and
    `extract_ray`: they must start without torch (seconds and hundreds of MiB each)."""
    code = (
        "import sys, avarnet.decode, avarnet.store, avarnet.apps.extract_ray; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def top_level(mod: str) -> str:
    """The layer of a module: ``avarnet.store`` -> ``store``, ``avarnet.apps.serve.web.pages`` ->
    ``apps.serve`` (each application is a layer of its own); ``avarnet`` itself -> ``""``."""
    parts = mod.split(".")[1:]
    if parts[:1] == ["apps"] and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0] if parts else ""


def test_every_module_is_placed_in_a_layer_and_imports_only_below_it():
    """CORE then APPS is the order of the layers, bottom first: a module imports only modules of
    its own top-level package or listed before it (a new module goes in one of the lists)."""
    mods = modules()
    unlisted = sorted({top_level(m) for m in mods} - set(LAYERS) - {""})
    assert not unlisted, f"modules in neither CORE nor APPS: {unlisted}"
    bad = set()
    for mod, edges in imports(mods).items():
        here = top_level(mod)
        if not here:
            continue
        for target, _ in edges:
            there = top_level(owner(target, mods))
            if there and there != here and LAYERS.index(there) > LAYERS.index(here):
                bad.add(f"{mod} imports {there}, listed above {here}")
    assert not bad, "\n".join(sorted(bad))


def test_no_function_is_longer_than_a_screenful_or_two():
    long = {}
    for mod, path in modules().items():
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[(mod, node.name)] = n
    over = [
        f"{m}.{f}: {n} lines" for (m, f), n in sorted(long.items()) if (m, f) not in LONG_FUNCTIONS
    ]
    assert not over, "\n".join(over)
    assert LONG_FUNCTIONS <= set(long), "split already: remove it from LONG_FUNCTIONS"


def test_command_line_is_one_short_module_per_command_group():
    """Each command group builds its own parsers in its own module, none longer than
    MAX_CLI_MODULE_LINES; the package itself only assembles them."""
    from avarnet import cli

    paths = sorted((PKG / "cli").glob("*.py"))
    assert len(paths) >= 6 and not (PKG / "cli.py").exists()
    long = {
        p.name: n for p in paths if (n := len(p.read_text().splitlines())) > MAX_CLI_MODULE_LINES
    }
    assert not long, f"over {MAX_CLI_MODULE_LINES} lines: {long}"
    commands = set(cli.ORDER)
    assert set(cli.PARSERS) == set(cli.COMMANDS) == commands
    owners = {name: add.__module__ for name, add in cli.PARSERS.items()}
    assert len(set(owners.values())) >= 5 and "avarnet.cli" not in owners.values()
    assert all(cli.COMMANDS[n].__module__ == owners[n] for n in commands)
