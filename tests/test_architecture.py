"""Layering rules checked on the source: no import cycles, the core and the UI never import the CLI, small modules.

The import graph is built with ``ast`` from every module of the package: relative imports are resolved, imports
inside functions count (a lazy import is still a dependency), imports under ``if TYPE_CHECKING:`` do not (they
never run). Imports by string count where the string is literal: ``importlib.import_module("...")``,
lazy registry entries (``add_lazy(name, "module:attr")``, ``register_lazy``) and lazy faces (``lazy_face``).

Every wing of the core has a public face, its ``__all__``: another wing imports only names it lists, never
the wing's package or modules as objects, and each name on it is used outside the wing.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"ssm_profile": "profiler", "ssm_profile.reports": "reports", "ssm_profile.tui": "tui"}
CLI = "ssm_profile.cli"
MAX_LINES = 600
LONG_MODULES_ALLOWED: set[str] = set()
# The compute kernels: they import one another and nothing else of the project.
KERNEL_MODULES = {"ssm_profile.kernels.fastscan", "ssm_profile.kernels.fastscan2", "ssm_profile.kernels.fastdelta",
                  "ssm_profile.kernels.fastlinear", "ssm_profile.kernels.simd"}
FRONT_ENDS = ("ssm_profile.cli", "ssm_profile.tui", "ssm_profile.reports")
# The wings, bottom to top: a wing imports only wings below it (the README's "How it is built" draws
# the same order). The package's top module is no wing: it holds the version and the lazy public face.
WINGS = ("base", "model", "tasks", "kernels", "mixers", "criteria", "calibration", "documents", "profiling",
         "validation", "pruning", "recovery", "plan", "bench", "reports", "tui", "cli")
# The wings of the core, each with a public face (its ``__all__``): what the other wings may import from it.
CORE_WINGS = WINGS[:WINGS.index("reports")]
# The kernels' face names its modules (each kernel module is its own face); every other face names objects.
MODULE_FACES = {"kernels"}
# Faces that import their names eagerly (they load torch); every other face imports lazily, torch-free.
EAGER_FACES = {"criteria", "mixers"}


def _modules() -> dict[str, Path]:
    """module name -> source file, for every module of the package (sub-packages by their ``__init__``)."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


@functools.lru_cache(maxsize=None)
def parsed(path: Path) -> ast.AST:
    """A module's syntax tree, parsed once for every rule that reads it (read-only)."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST, type_only: bool = False):
    """Every Import/ImportFrom node, at any depth, except those under ``if TYPE_CHECKING:`` (unless
    ``type_only``: then those count too)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if not type_only and isinstance(node, ast.If) and _is_type_checking(node):
            children = node.orelse
        stack.extend(children)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _deepest_module(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(type_only: bool = False) -> dict[str, set[str]]:
    """module -> the package modules it imports (``type_only``: counting imports for type checkers);
    built once per kind, each caller gets its own copy."""
    return {module: set(targets) for module, targets in _import_graph(type_only).items()}


@functools.lru_cache(maxsize=None)
def _import_graph(type_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        tree = parsed(path)
        for node in _import_nodes(tree, type_only):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = _resolve(node, module, path.name == "__init__.py")
                # `from pkg import sub` imports the module pkg.sub when there is one, else names from pkg.
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names]
            targets.update(t for n in names if (t := _deepest_module(n, modules)) and t != module)
        targets.update(t for n in _string_imports(tree, module) if (t := _deepest_module(n, modules)) and t != module)
        graph[module] = targets
    return graph


def _string_imports(tree: ast.AST, package: str = "", attributes: bool = False) -> set[str]:
    """Modules named by string where they are imported: ``importlib.import_module("...")``, lazy
    registry entries (``add_lazy(name, "ssm_profile.x:Attr")``, ``register_lazy(...)``) and the modules of
    a lazy face (``lazy_face(__name__, {".resolve": (...)})`` in ``package``'s ``__init__``); with
    ``attributes``, a lazy entry keeps its ``:Attr``."""
    found = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))):
            continue
        called = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
        if called == "lazy_face" and len(node.args) > 1 and isinstance(node.args[1], ast.Dict):
            found.update(f"{package}{key.value}" for key in node.args[1].keys
                         if isinstance(key, ast.Constant) and isinstance(key.value, str))
            continue
        position = {"import_module": 0, "add_lazy": 1, "register_lazy": 1}.get(called)
        if position is not None and len(node.args) > position:
            arg = node.args[position]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value if attributes else arg.value.partition(":")[0])
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path (first node repeated at the end) per strongly connected component with a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph is small, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_path(graph, component) for component in components]


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, staying inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle in component {component}")  # pragma: no cover


def test_graph_sees_relative_lazy_and_skips_type_checking_imports():
    """The graph builder itself: a known relative import, a function-level one, and no TYPE_CHECKING edge."""
    graph = import_graph()
    assert "ssm_profile.base.io" in graph["ssm_profile.profiling.results"]  # `from .io import ...` at module level
    assert "ssm_profile.base.io" in graph["ssm_profile.reports"]  # `from ssm_profile.base.io import ...` in a function
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\nelse:\n    import y\n")
    assert sorted(alias.name for node in _import_nodes(tree) for alias in node.names) == ["TYPE_CHECKING", "y"]


def test_no_import_cycles_counting_type_only_imports():
    cycles = find_cycles(import_graph(type_only=True))
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def wing_of(module: str) -> str | None:
    """``ssm_profile.profiling.results`` -> ``profiling``; the package's top module is no wing."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_lives_in_a_wing():
    """No module beside the wings: a newcomer finds every file under a name that says what it does."""
    loose = sorted(m for m in _modules() if m != "ssm_profile" and wing_of(m) not in WINGS)
    assert loose == []


def test_a_wing_imports_only_the_wings_below_it():
    rank = {wing: i for i, wing in enumerate(WINGS)}
    upward = sorted(f"{module} -> {target}" for module, targets in import_graph(type_only=True).items()
                    for target in targets
                    if wing_of(module) and wing_of(target) and rank[wing_of(target)] > rank[wing_of(module)])
    assert upward == []


def _how_it_is_built() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("## How it is built", 1)[1].split("\n## ", 1)[0]


def _readme_rows() -> dict[str, str]:
    """wing -> its row of the README's table (the "what it holds" cell), in the table's order."""
    return {line.split("`")[1]: line.split("|")[2] for line in _how_it_is_built().splitlines()
            if line.startswith("| `") and line.split("`")[1] in WINGS}


def _readme_drawing() -> dict[str, str]:
    """wing -> what its line of the README's drawing says it imports, in the drawing's order."""
    block = _how_it_is_built().split("```", 2)[1]
    return {wing: targets.strip() for line in block.splitlines() if "►" in line
            for wing, targets in [line.split("►", 1)] for wing in [wing.strip(" ─")]}


def test_the_readme_draws_the_wings_in_this_order():
    """The README's "How it is built" draws the wings, and lists them in its table, bottom to top exactly as
    :data:`WINGS` (drawn top first: the last line is the bottom wing)."""
    assert list(_readme_drawing()) == list(reversed(WINGS))
    assert list(_readme_rows()) == list(reversed(WINGS))


def test_the_readme_drawing_shows_what_each_wing_imports():
    """Each arrow of the drawing is a wing's imports of other wings (type-only counted), no more, no fewer."""
    imports: dict[str, set[str]] = {wing: set() for wing in WINGS}
    for module, targets in import_graph(type_only=True).items():
        if wing_of(module):
            imports[wing_of(module)] |= {wing_of(t) for t in targets if wing_of(t) and wing_of(t) != wing_of(module)}
    drawn = {}
    for wing, text in _readme_drawing().items():
        if text == "every wing below it":
            drawn[wing] = set(WINGS[:WINGS.index(wing)])
        else:
            drawn[wing] = set() if text == "nothing of the project" else set(text.split())
    assert drawn == imports


def test_the_readme_names_every_module_of_each_wing():
    """A newcomer finds every file from the table: each module of a wing is named in that wing's row."""
    rows = _readme_rows()
    unnamed = sorted(f"{wing}: {module.rpartition('.')[2]}" for module, path in _modules().items()
                     if (wing := wing_of(module)) and path.name != "__init__.py"
                     and f"`{module.rpartition('.')[2]}`" not in rows[wing])
    assert unnamed == []


def test_only_the_cli_imports_the_cli():
    graph = import_graph()
    leaks = sorted(f"{module} -> {target}" for module, targets in graph.items()
                   if not (module == CLI or module.startswith(CLI + "."))
                   for target in targets if target == CLI or target.startswith(CLI + "."))
    assert leaks == []


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_core_never_imports_a_front_end():
    """The core computes results; the CLI, the TUI and the reports render them (never the other way)."""
    leaks = sorted(f"{module} -> {target}" for module, targets in import_graph().items()
                   if not any(_inside(module, front) for front in FRONT_ENDS)
                   for target in targets if any(_inside(target, front) for front in FRONT_ENDS))
    assert leaks == []


def test_kernel_modules_import_nothing_of_the_core():
    graph = import_graph()
    leaks = sorted(f"{module} -> {target}" for module in KERNEL_MODULES for target in graph[module]
                   if target not in KERNEL_MODULES)
    assert leaks == []


def test_importlib_imports_are_in_the_graph():
    """``importlib.import_module("ssm_profile....")`` and registry entries ("module:attr") count as imports."""
    graph = import_graph()
    assert "ssm_profile.cli.env_cmd" in graph["ssm_profile.cli.main"]  # a lazily registered command
    assert "ssm_profile.criteria.captum_attr" in graph["ssm_profile.criteria"]  # a lazy criterion
    assert "ssm_profile.model.resolve" in graph["ssm_profile.model"]  # a lazy face's module


def test_modules_are_short():
    long = sorted(f"{name}: {n} lines" for name, path in _modules().items()
                  if name not in LONG_MODULES_ALLOWED
                  and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES)
    assert long == []


def test_front_end_modules_load_without_torch():
    """The TUI shows before torch loads: its views, the defaults and the runtime helpers must not import torch."""
    code = ("import sys, ssm_profile.base.defaults, ssm_profile.base.runtime, ssm_profile.base.fmt, ssm_profile.tui.app, "
            "ssm_profile.tui.profile_view; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_forms_criteria_before_torch_loads_are_the_registry():
    """The Profile form lists DEFAULT_CRITERIA plus horizon until the registry (which needs torch) is read."""
    from ssm_profile.criteria import available
    from ssm_profile.tui.profile_view import CRITERIA_BEFORE_TORCH

    assert sorted(CRITERIA_BEFORE_TORCH) == sorted(available())


def test_the_public_face_names_functions_and_classes_not_modules():
    """``from ssm_profile import validate`` is the function (no module of that name shadows it)."""
    import ssm_profile

    face = faces()
    for name in ssm_profile.__all__:
        value = getattr(ssm_profile, name)
        assert not inspect.ismodule(value), f"ssm_profile.{name} is a module"
        if name != "__version__":  # each name is taken from its wing's face
            assert name in face[wing_of(ssm_profile._LAZY[name])], name
    assert inspect.isfunction(ssm_profile.validate) and ssm_profile.validate.__module__.endswith("validation.check")


def faces() -> dict[str, set[str]]:
    """wing -> the names of its public face (``__all__``), for every wing of the core."""
    return {wing: set(importlib.import_module(f"ssm_profile.{wing}").__all__) for wing in CORE_WINGS}


def _bindings(module: str, tree: ast.AST, is_package: bool) -> list[tuple[str, str | None]]:
    """What each import in ``module`` binds, as (module imported from, name) pairs; name None: the module
    object itself. ``import a.b.c`` (with or without ``as``) and ``importlib.import_module("a.b.c")`` bind the
    module ``a.b.c`` (``a`` reaches it), ``from a.b import c`` binds ``c`` of ``a.b`` and a lazy entry
    ``"a.b:c"`` names ``c`` of ``a.b``; type-only imports count."""
    found: list[tuple[str, str | None]] = []
    for node in _import_nodes(tree, type_only=True):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        else:
            base = _resolve(node, module, is_package)
            found += [(base, alias.name) for alias in node.names]
    for target in sorted(_string_imports(tree, attributes=True)):
        source, _, name = target.partition(":")
        if not source.startswith("."):  # a lazy face's own modules, named relative to its package
            found.append((source, name or None))
    return found


def face_violations(module: str, tree: ast.AST, is_package: bool, face: dict[str, set[str]]) -> list[str]:
    """Imports in ``module`` that reach into another core wing past its face. A wing may bind only the names
    its face lists (``from ..B import x``, ``from ..B.mod import x`` with ``x`` in B's ``__all__``); binding
    the wing's package or one of its modules (``import ssm_profile.B``, ``from .. import B``,
    ``from ..B import mod``, ``importlib.import_module("ssm_profile.B.mod")``) would reach every internal
    name through an attribute, and is refused unless the face names that module (the kernels')."""
    found = []
    for source, name in _bindings(module, tree, is_package):
        if name is None:  # the module object: ssm_profile.B[.mod]
            source, _, name = source.rpartition(".")
        if source == "ssm_profile" and name in face and name != wing_of(module):
            found.append(f"{module}: {name} from {source} (binds the wing's package; import names on "
                         f"ssm_profile.{name}.__all__)")
            continue
        wing = wing_of(source) if source.startswith("ssm_profile.") else None
        if wing in face and wing != wing_of(module) and name not in face[wing]:
            found.append(f"{module}: {name} from {source} (not in ssm_profile.{wing}.__all__)")
    # `import ssm_profile[.x.y]` without `as` binds the top package, and through its attributes every wing
    found += [f"{module}: ssm_profile bound by `import {alias.name}` (every wing's internals are its attributes; "
              "import names, or bind the module with `as`)"
              for node in _import_nodes(tree, type_only=True) if isinstance(node, ast.Import)
              for alias in node.names if alias.asname is None and alias.name.split(".")[0] == "ssm_profile"]
    return found


def test_a_wing_imports_only_the_public_faces_of_the_others():
    """Another wing's private modules stay private: what crosses a wing's wall is named in its ``__all__``."""
    face = faces()
    found = []
    for module, path in _modules().items():
        tree = parsed(path)
        found += face_violations(module, tree, path.name == "__init__.py", face)
    assert not found, "\n".join(sorted(found))


def test_the_face_rule_sees_each_kind_of_import():
    """The checker itself: a private name, a name outside the face, a module, a wing's package (however it is
    bound: plain import, ``as``, ``from .. import``, importlib), a lazy entry off the face and the top package
    bound by ``import ssm_profile.x`` are refused; public names, a module the face names, imports inside one
    wing and the top package's names pass."""
    face = {"model": {"load_model"}, "kernels": {"fastscan"}, "plan": {"make_plan"}}
    code = ("from ..model.resolve import load_model, _secret\nfrom ..model import find_mixers\n"
            "from ..model import resolve\nimport ssm_profile.model.resolve\nfrom ..kernels import fastscan\n"
            "from .search import _internal\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from ..model.arch import MixerInfo\n"
            "import ssm_profile.model\nimport ssm_profile.model as m\nfrom .. import model\n"
            "from ssm_profile import model as mm\nfrom ssm_profile import kernels\nimport ssm_profile.kernels.fastscan\n"
            "import importlib\nimportlib.import_module('ssm_profile.model.resolve')\n"
            "importlib.import_module('ssm_profile.model')\nimport_module('ssm_profile.kernels.fastscan')\n"
            "REGISTRY.add_lazy('x', 'ssm_profile.model.arch:MixerInfo')\nREGISTRY.add_lazy('y', 'ssm_profile.model:load_model')\n"
            "from .. import __version__\nfrom ssm_profile import load_model\nfrom . import search\nimport ssm_profile.plan.search\n")
    found = face_violations("ssm_profile.plan.options", ast.parse(code), False, face)
    assert sorted(line.split(": ")[1].split(" ")[0] for line in found) == sorted([
        "_secret", "find_mixers", "resolve", "resolve", "MixerInfo",  # from-imports off the face
        "model", "model", "model", "model", "kernels",  # a wing's package bound, however spelt
        "resolve", "model", "MixerInfo",  # importlib and lazy registry entries
        # the top package bound by a plain import, through which any wing is an attribute
        "ssm_profile", "ssm_profile", "ssm_profile", "ssm_profile"])


# Face names no other wing, front end, example or README snippet imports, kept for a library user: the
# mixer-family interface (to add a family), the criteria's decorator, the documents' leaf classes and the
# plan file's validator.
KEPT_FOR_USERS = {"mixers": {"FAMILIES", "MixerFallbackWarning", "MixerFamily", "Stage"}, "criteria": {"register"},
                  "documents": {"ForwardCheck", "PairedChange", "SpeedChange", "TaskScores", "Timing", "validate_plan"}}


def test_every_face_name_is_used_outside_its_wing():
    """A face stays small: each name on it is imported by another wing, a front end, an example or the
    README's Python snippets, is on ``ssm_profile``'s own face, or is kept for users by name above."""
    import re

    import ssm_profile

    face = faces()
    stale = sorted(f"{wing}.{name}" for wing, names in KEPT_FOR_USERS.items() for name in names - face[wing])
    assert stale == [], "KEPT_FOR_USERS names what the face no longer lists"
    used = {wing: set(KEPT_FOR_USERS.get(wing, ())) for wing in face}
    for name, home in ssm_profile._LAZY.items():
        used[wing_of(home)].add(name)
    sources = [(module, path) for module, path in _modules().items()]
    sources += [(f"examples.{path.stem}", path) for path in sorted((ROOT / "examples").glob("*.py"))]
    for module, path in sources:
        tree = parsed(path)
        for source, name in _bindings(module, tree, path.name == "__init__.py"):
            wing = wing_of(source) if source.startswith("ssm_profile.") else None
            if wing in face and wing != wing_of(module) and name:
                used[wing].add(name)
    snippets = "\n".join(re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S))
    for wing, names in face.items():
        used[wing] |= {name for name in names if re.search(rf"\b{re.escape(name)}\b", snippets)}
    unused = sorted(f"ssm_profile.{wing}.{name}" for wing, names in face.items() for name in names - used[wing])
    assert unused == [], "face names nothing outside the wing uses (drop them, or keep them in KEPT_FOR_USERS)"


def test_every_face_name_is_there_and_no_module_shadows_it():
    """Each name of a face resolves, even after every module of the wing is imported (a module ``validate``
    beside a public function ``validate`` would replace it on the package)."""
    for module in _modules():
        if wing_of(module) in CORE_WINGS:
            importlib.import_module(module)
    for wing, names in faces().items():
        package = importlib.import_module(f"ssm_profile.{wing}")
        for name in sorted(names):
            value = getattr(package, name)
            is_own_module = inspect.ismodule(value) and value.__name__ == f"ssm_profile.{wing}.{name}"
            assert is_own_module == (wing in MODULE_FACES), f"ssm_profile.{wing}.{name} is {value!r}"


def test_lazy_faces_load_without_torch():
    """A front end may import one name of a wing without loading the wing's torch-heavy modules."""
    lazy = [f"ssm_profile.{wing}" for wing in CORE_WINGS if wing not in EAGER_FACES]
    code = f"import sys, {', '.join(lazy)}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
