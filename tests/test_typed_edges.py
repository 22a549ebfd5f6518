"""Documents stay typed to the edge: no code outside ``profiler/documents/`` reads a document's or the run
record's parts by string key (``x.totals["parameters"]``, ``x.output.get("files")``, or through a local
name bound to such a part). These parts were dicts once; each is now a typed object, and this test keeps
them from dissolving back into key lookups."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("profiler", "reports", "tui", "examples")
EXEMPT = ("profiler/documents/",)  # the documents' one reader and writer

# Parts of PruningRecord, ValidationReport, RecoveryRecord, RunRecord and AnalysisResult that were dicts
# read by key; mappings by nature (versions, timings, TaskScores' metric -> score, dims, config) are not listed.
TYPED_PARTS = frozenset({"model", "totals", "output", "sliced", "calibration", "pruned", "settings", "plan", "data",
                         "tokenizer", "budget", "incremental", "models", "analysis"})


def _typed_part(node: ast.AST) -> str | None:
    """The part's name when ``node`` is ``<expr>.<part>`` (or ``<expr>.<part> or {}``)."""
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
        node = node.values[0]
    return node.attr if isinstance(node, ast.Attribute) and node.attr in TYPED_PARTS else None


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _own_nodes(scope: ast.AST) -> list[ast.AST]:
    """The nodes of ``scope`` outside the functions nested in it (each function is a scope of its own)."""
    out, stack = [], list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        out.append(node)
        if not isinstance(node, FUNCTIONS):
            stack.extend(ast.iter_child_nodes(node))
    return out


def _aliases(scope: ast.AST) -> set[str]:
    """Local names bound to a typed part in ``scope`` (``m = a.model``, ``m, t = a.model, a.totals``)."""
    names: set[str] = set()
    for node in _own_nodes(scope):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple)
                     and isinstance(node.value, ast.Tuple) else [(target, node.value)])
            names |= {t.id for t, v in pairs if isinstance(t, ast.Name) and _typed_part(v)}
    return names


def _is_string(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def string_key_reads(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string-key read of a typed part in ``source``."""
    tree = ast.parse(source)
    found: set[tuple[int, str]] = set()
    for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, FUNCTIONS))]:
        aliases = _aliases(scope)

        def typed(node: ast.AST) -> bool:
            return _typed_part(node) is not None or (isinstance(node, ast.Name) and node.id in aliases)

        for node in _own_nodes(scope):
            if isinstance(node, ast.Subscript) and _is_string(node.slice) and typed(node.value):
                found.add((node.lineno, ast.unparse(node)))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                  and node.args and _is_string(node.args[0]) and typed(node.func.value)):
                found.add((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_no_string_key_reads_of_typed_documents_outside_the_documents():
    reads = []
    for top in CHECKED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(EXEMPT):
                reads += [f"{rel}:{line}: {text}" for line, text in string_key_reads(path.read_text(encoding="utf-8"))]
    assert reads == [], "read these by attribute:\n" + "\n".join(reads)


def test_the_check_sees_direct_aliased_and_defaulted_reads():
    source = '''
def f(result, record):
    small = result.analysis.totals["parameters"] < 10
    info = result.analysis.model or {}
    kinds = info.get("mixer_kinds", [])
    m, t = result.analysis.model, result.analysis.totals
    record.output["files"] = []
    return m["name"], t.parameters, record.models["pruned"], record.analysis.before

def g(m, row):
    return m["name"], row["group"], record.versions["torch"], record.data.windows
'''
    lines = [line for line, _ in string_key_reads(source)]
    assert lines == [3, 5, 7, 8, 8]  # g's parameters and mappings are not typed parts
