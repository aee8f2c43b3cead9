"""One import package, layers that point one way.

Every module of the distribution imports first in a fresh interpreter, from a folder that
holds decoy ``policies``, ``evaluators``, ``search_spaces`` and ``autocompress`` look-alikes;
the project's modules import each other without a cycle (function-level imports count).
"""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DECOY = "raise ImportError('the decoy {name!r} in the working directory was imported')\n"


def _modules() -> list[str]:
    import autocompress.evaluators
    import autocompress.policies
    import autocompress.search_spaces

    names = []
    for package in (autocompress, autocompress.evaluators, autocompress.policies, autocompress.search_spaces):
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return sorted(set(names))


MODULES = _modules()


@pytest.fixture(scope="module")
def decoy_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user-project")
    for name in ("policies", "evaluators", "search_spaces", "search", "core", "graph"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(DECOY.format(name=name))
    return folder


def _run(code: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(cwd),
    }  # the user's folder also on PYTHONPATH: nothing of theirs may win
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_distribution_installs_one_top_level_package():
    assert set(MODULES) >= {"autocompress.policies", "autocompress.evaluators", "autocompress.search_spaces"}
    assert all(m == "autocompress" or m.startswith("autocompress.") for m in MODULES)


def test_every_module_imports_first_in_a_fresh_interpreter(decoy_folder):
    failures = []
    for name in MODULES:
        out = _run(f"import {name}", decoy_folder)
        if out.returncode != 0:
            failures.append(
                f"{name}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
            )
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_a_script_beside_decoy_packages_compresses_evaluates_and_searches(decoy_folder, tmp_path):
    script = textwrap.dedent(f"""
        import autocompress
        from autocompress import Finetune, Policy, Target
        from autocompress.data import load_dataset, make_loaders
        from autocompress.zoo import pretrained

        model = pretrained("mnist_cnn", "digits", epochs=1)
        train, val, test = make_loaders(load_dataset("digits"), batch_size=64)
        compressed = autocompress.apply_policy(model, Policy.quantize(8, 8), train, finetune=Finetune(epochs=0.2))
        report = autocompress.evaluate({{"fp32": model, "int8": compressed}}, test, target=Target(threads=1))
        assert report.rows["int8"]["accuracy"] > 0.8, report.table()
        workdir = {str(tmp_path / "search")!r}
        result = autocompress.search(model, train, val, space="compact", n_trials=1, workdir=workdir,
                                     finetune=Finetune(epochs=0.1), progress=False)
        assert result.trials and result.trials[0].state == "COMPLETE", result.summary()
        print("ok")
    """)
    out = _run(script, decoy_folder, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


# -- import graph --------------------------------------------------------------------------------
def _source(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    return Path(spec.origin)


def _imports(name: str) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (module or function level)."""
    tree = ast.parse(_source(name).read_text())
    is_package = _source(name).name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([base] if base else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names
            ]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


def test_no_import_cycles():
    graph = {name: _imports(name) for name in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for name in MODULES:
        for node in ast.walk(ast.parse(_source(name).read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autocompress"):
                offenders += [
                    f"{name}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert not offenders, "\n".join(offenders)


def test_the_compression_core_does_not_import_the_demo_zoo_or_data():
    core = [
        "autocompress.core",
        "autocompress.graph",
        "autocompress.quantization",
        "autocompress.pruning",
        "autocompress.sparsity",
        "autocompress.distillation",
        "autocompress.training",
        "autocompress.export",
    ]
    for name in core:
        assert not _imports(name) & {"autocompress.zoo", "autocompress.data"}, name
