"""Imports point the way STYLE.md draws them: webapp -> studies, training -> models_serving.

Plain-Python packages never import Django or our Django apps, studies never imports webapp, and
nothing on the web path pulls in the training stack when it is imported.
"""

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DJANGO_BOUND = ("django", "channels")
TRAINING_STACK = ("torch", "transformers", "trl", "peft")
# package folder -> names it must not import (a name covers its submodules), and exceptions
PLAIN_PACKAGES = {
    "models_serving": (("studies", "webapp", "training", "analysis"), ()),
    "training/pipeline": (("studies", "webapp", "training", "analysis"), ("training.pipeline",)),
    "analysis": (("studies", "webapp", "training", "models_serving"), ()),
}
WEB_PATH = ("studies", "webapp", "models_serving")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class ImportCollector(ast.NodeVisitor):
    """Collects (imported name, line, at module level) for one module."""

    def __init__(self, path: Path, root: Path) -> None:
        self.package = module_name(path, root).split(".")
        if path.name != "__init__.py":
            self.package = self.package[:-1]
        self.found: list[tuple[str, int, bool]] = []
        self.depth = 0

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            self.depth += 1
            for child in node.body:
                self.visit(child)
            self.depth -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, node.lineno, self.depth == 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package[: len(self.package) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            name = base if alias.name == "*" else f"{base}.{alias.name}"
            self.found.append((name, node.lineno, self.depth == 0))


def imports(folder: str, root: Path = ROOT) -> Iterator[tuple[str, str, bool]]:
    """Yield (where, imported name, at module level) for every import under root/folder."""
    for path in sorted((root / folder).rglob("*.py")):
        collector = ImportCollector(path, root)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        for name, line, module_level in collector.found:
            yield f"{path.relative_to(root)}:{line}", name, module_level


def covers(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_django_bound(name: str) -> bool:
    top = name.split(".")[0]
    return top in DJANGO_BOUND or top.startswith("django_")


@pytest.mark.parametrize("folder", PLAIN_PACKAGES)
def test_plain_packages_import_neither_django_nor_our_apps(folder):
    forbidden, allowed = PLAIN_PACKAGES[folder]
    wrong = [
        f"{where} imports {name}"
        for where, name, _ in imports(folder)
        if (is_django_bound(name) or any(covers(p, name) for p in forbidden))
        and not any(covers(a, name) for a in allowed)
    ]
    assert not wrong, "\n".join(wrong)


def test_studies_never_imports_webapp():
    wrong = [
        f"{where} imports {name}" for where, name, _ in imports("studies") if covers("webapp", name)
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("folder", WEB_PATH)
def test_the_web_path_does_not_import_the_training_stack_at_module_level(folder):
    wrong = [
        f"{where} imports {name}"
        for where, name, module_level in imports(folder)
        if module_level and any(covers(lib, name) for lib in TRAINING_STACK)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_imports_in_all_their_forms(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(
        "import torch\nfrom . import sibling\nfrom django.db import models\n"
        "def f():\n    import trl\n"
        "if TYPE_CHECKING:\n    import peft\n"
    )
    found = {(name, level) for _, name, level in imports("pkg", root=tmp_path)}
    assert found == {
        ("torch", True),
        ("pkg.sibling", True),
        ("django.db.models", True),
        ("trl", False),
        ("peft", False),
    }


def test_importing_the_asgi_application_does_not_load_the_training_stack():
    probe = (
        "import sys, webapp.asgi\n"
        f"print(','.join(m for m in {TRAINING_STACK!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"webapp.asgi loaded {result.stdout.strip()}"
