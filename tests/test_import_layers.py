"""The package's import structure, read statically: no import cycles, no lower layer importing an
upper one, and run-folder names taken from run_files.

Every module under seq2seq_es/ is parsed with `ast`; every import statement counts, also those
inside functions (the lazy imports that keep start-up fast are exactly where cycles hid: cli ->
demo -> cli, models families -> tiny -> convert_led -> families, slurm cli <-> bench). A relative
import is resolved against its module's package; `from pkg import name` is an edge to the module
pkg.name when there is one, else to pkg. Nothing is imported, so this runs in a second.

Layers, bottom up:
  errors, run_files, line_files, launch_env, process_exit
                           import nothing of the package (run_files: errors at most; errors:
                           launch_env and process_exit, to say an error once per node)
  config, config_help, metrics_log, models, tasks, metrics, data, kernels
                           never import engine, cli, slurm, bench or demo
  engine, bench, demo, slurm, cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import seq2seq_es

PACKAGE_DIR = Path(seq2seq_es.__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name

# module -> what it may import of the package
BOTTOM = {"errors": {"launch_env", "process_exit"}, "run_files": {"errors"}, "line_files": set(),
          "launch_env": set(), "process_exit": set()}
LOWER = ("config", "config_help", "metrics_log", "models", "tasks", "metrics", "data", "kernels")
UPPER = ("engine", "cli", "slurm", "bench", "demo")


def package_modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _deepest_module(dotted: str, modules) -> str | None:
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def import_edges(modules) -> dict[str, list[tuple[str, int]]]:
    """module -> [(imported package module, line)], over every import statement in the file."""
    edges: dict[str, list[tuple[str, int]]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        found = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules
                           else source for alias in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] != PACKAGE:
                    continue
                module = _deepest_module(target, modules)
                if module is not None and module != name:
                    found.append((module, node.lineno))
        edges[name] = sorted(set(found))
    return edges


def cycles(edges) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted({t for t, _ in edges[root]})))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted({t for t, _ in edges[child]}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def _where(module: str, line: int, modules) -> str:
    return f"{modules[module][0].relative_to(PACKAGE_DIR.parent)}:{line}"


MODULES = package_modules()
EDGES = import_edges(MODULES)


def test_the_walker_sees_imports_inside_functions_and_relative_ones():
    # cli imports the demo inside cmd_demo; the trainer imports the checkpointer relatively.
    assert "seq2seq_es.demo.run" in {t for t, _ in EDGES["seq2seq_es.cli"]}
    assert "seq2seq_es.engine.checkpoint" in {t for t, _ in EDGES["seq2seq_es.engine.trainer"]}
    assert "seq2seq_es.errors" in {t for t, _ in EDGES["seq2seq_es.engine.trainer"]}
    assert cycles({"a": [("b", 1)], "b": [("c", 1)], "c": [("a", 1)], "d": [("a", 1)]}) == \
        [["a", "b", "c"]]


def test_no_import_cycles():
    problems = []
    for component in cycles(EDGES):
        inside = [f"  {_where(source, line, MODULES)}: {source} -> {target}"
                  for source in component for target, line in EDGES[source] if target in component]
        problems.append(f"cycle among {', '.join(component)}:\n" + "\n".join(inside))
    assert not problems, "\n".join(problems)


def test_lower_layers_never_import_upper_ones():
    problems = []
    for module, imported in EDGES.items():
        layer = _layer(module)
        for target, line in imported:
            where = f"{_where(module, line, MODULES)}: {module} imports {target}"
            if layer in BOTTOM and _layer(target) not in BOTTOM[layer]:
                problems.append(f"{where} ({layer} is the bottom layer)")
            elif layer in LOWER and _layer(target) in UPPER:
                problems.append(f"{where} ({layer} is below {', '.join(UPPER)})")
    assert not problems, "\n".join(problems)


RUN_FOLDER_NAMES = {"DONE", "PREEMPTED", "OUT_OF_REQUEUES", "config.yaml", "versions.json",
                    "deepspeed_config.json", "data_report.json", "metrics.jsonl", "checkpoints",
                    "trainer_state.json", "best.json", "final", "final_results.json",
                    "evaluations", "slurm_events.jsonl"}


def test_run_folder_paths_are_built_from_run_files():
    """`path / "DONE"` anywhere but run_files.py: engine and slurm could drift apart again."""
    problems = []
    for module, (path, _) in MODULES.items():
        if module == f"{PACKAGE}.run_files":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                    and isinstance(node.right, ast.Constant) and node.right.value in
                    RUN_FOLDER_NAMES):
                problems.append(f"{_where(module, node.lineno, MODULES)}: / {node.right.value!r}")
    assert not problems, "use seq2seq_es.run_files:\n" + "\n".join(problems)
