"""The import layers (STYLE.md: data flows config -> prompts -> backend -> stages -> store -> query /
eval / report; the composers on top). Every `from mrtk... import` in every module, the lazy ones
inside functions too, is read from the source: no import goes up the layers, and `stages/` imports
neither `store/` nor `evals/`. A new module must be given a layer here. This replaced a count of
the modules one walk passed through, which failed on a harmless split and passed a bad merge."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mrtk"

# Lowest first. A module may import from its own layer and the layers below it.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "basics",
        [
            "errors",
            "faults",
            "resources",
            "rows",
            "ties",
            "parse",
            "present.trackers",
            "bench.serving_sim",
            "store.migrations",
            "store.saved",
            "ui",
            "verify",
        ],
    ),
    (
        "inputs",
        [
            "config",
            "prompts",
            "models",
            "data",
            "hardware",
            "training.recipe",
            "training.adapters",
            "training.packed_dpo",
        ],
    ),
    ("backends", ["backends", "programs"]),
    ("stages", ["stages", "training.dpo", "training.sft"]),
    ("store", ["store", "inputs", "training.worker"]),
    ("runs", ["runs", "lanes", "stream", "present.summary", "plan"]),
    ("read side", ["evals", "present.compare", "present.report", "rejudge", "eft"]),
    ("composers", ["evaluate", "semi_online", "loop", "present.study", "bench", "cli"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Packages whose __init__ is a docstring only: the package itself is at the bottom, and each of its
# modules still needs its own entry above.
DOCSTRING_PACKAGES = {"training", "present"}


def layer_of(module: str) -> int:
    """The layer of `mrtk.a.b`: the longest listed prefix of `a.b` decides (store.saved before store)."""
    name = module.removeprefix("mrtk").lstrip(".")
    if name in DOCSTRING_PACKAGES:
        return 0
    best = max(
        (
            (len(p), i)
            for i, (_, prefixes) in enumerate(LAYERS)
            for p in prefixes
            if name == p or name.startswith(p + ".")
        ),
        default=None,
    )
    assert best is not None, f"{module} has no layer in tests/test_layers.py: give it one"
    return best[1]


def imports(path: Path) -> set[str]:
    """The mrtk modules a file imports (`from mrtk.x import y` names mrtk.x.y when y is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mrtk":
            for alias in node.names:
                sub = ROOT.parent.joinpath(*f"{node.module}.{alias.name}".split("."))
                found.add(
                    f"{node.module}.{alias.name}" if sub.with_suffix(".py").is_file() or sub.is_dir() else node.module
                )
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mrtk"}
    return found - {"mrtk"}


def edges() -> list[tuple[str, str]]:
    return sorted((module_name(p), dep) for p in ROOT.rglob("*.py") for dep in imports(p))


def test_no_import_goes_up_the_layers():
    for path in ROOT.rglob("*.py"):
        if path.name != "__init__.py" or path.parent != ROOT:
            layer_of(module_name(path))  # every module has one
    up = [
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
        for a, b in edges()
        if layer_of(b) > layer_of(a)
    ]
    assert not up, "\n".join(up)


def test_stages_touch_neither_the_store_nor_the_evals():
    bad = [
        (a, b)
        for a, b in edges()
        if a.startswith(("mrtk.stages", "mrtk.training.dpo", "mrtk.training.packed_dpo", "mrtk.training.sft"))
        and b.startswith(("mrtk.store", "mrtk.evals"))
    ]
    assert not bad, bad


def test_evals_read_rows_and_never_drive_calls():
    """evals/ is rows in, numbers out: it imports neither the loop, the lanes that drive a stage's
    calls, the runs (opening a run's model), nor a backend opener; mrtk.evaluate produces for it."""
    bad = [
        (a, b)
        for a, b in edges()
        if a.startswith("mrtk.evals") and b.startswith(("mrtk.loop", "mrtk.lanes", "mrtk.runs", "mrtk.backends"))
    ]
    assert not bad, bad
    opener = [a for a, b in edges() if a.startswith("mrtk.evals") and b == "mrtk.evaluate"]
    assert not opener, opener


def test_the_rules_see_the_imports():
    """The reader finds lazy imports inside functions and module imports named in a from-list."""
    found = dict.fromkeys(edges())
    assert ("mrtk.loop", "mrtk.stages.actor") in found  # `from mrtk.stages import actor`
    assert ("mrtk.cli", "mrtk.loop") in found  # imported inside a command
    assert layer_of("mrtk.store.saved") < layer_of("mrtk.store.db")
