"""The library talks to Lightning through its public API only (no private attribute, no private-method override)."""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_mosaic"

# Known pending sites, each to be deleted from here by whoever removes the private use:
PENDING: set[str] = set()

TRAINER_BASES = {"trainer", "self.trainer", "pl_module.trainer"}
INTERNAL_MARKERS = ("_connector", "fit_loop", "epoch_loop", "_logger_connector", "_accelerator_connector")
LOOPS = ("fit_loop", "epoch_loop", "validate_loop", "test_loop", "predict_loop")
PRIVATE_OVERRIDES = {"_parse_ckpt_path"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _attribute_sites(tree: ast.AST) -> list[tuple[int, str]]:
    """Attribute reads and writes that reach into the Trainer's or a loop's internals."""
    sites = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = ast.unparse(node.value)
        text = f"{base}.{node.attr}"
        if _private(node.attr) and (base in TRAINER_BASES or any(m in base for m in INTERNAL_MARKERS)):
            sites.append((node.lineno, text))
        elif any(base == loop or base.endswith(f".{loop}") or f".{loop}." in base for loop in LOOPS):
            sites.append((node.lineno, f"{text} (an attribute of a Lightning loop)"))
    return sites


def _import_sites(tree: ast.AST) -> list[tuple[int, str]]:
    """Private names or modules imported from Lightning."""
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lightning":
            if any(_private(part) for part in node.module.split(".")):
                sites.append((node.lineno, f"from {node.module} import ..."))
            sites += [(node.lineno, f"from {node.module} import {a.name}") for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "lightning" and any(_private(part) for part in parts):
                    sites.append((node.lineno, f"import {alias.name}"))
    return sites


def _imports_lightning(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lightning":
            return True
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "lightning" for a in node.names):
            return True
    return False


def _override_sites(tree: ast.Module, module: object | None) -> list[tuple[int, str]]:
    """``_parse_ckpt_path`` anywhere, and methods of ``module``'s classes with a Lightning base named like a private
    method of that base."""
    sites = [
        (node.lineno, f"def {node.name}")
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in PRIVATE_OVERRIDES
    ]
    for class_node in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        cls = getattr(module, class_node.name, None)
        if not inspect.isclass(cls):
            continue
        bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] == "lightning"]
        for item in class_node.body:
            if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) or not _private(item.name):
                continue
            base = next((b for b in bases if hasattr(b, item.name)), None)
            if base is not None and item.name not in PRIVATE_OVERRIDES:
                sites.append((item.lineno, f"{class_node.name}.{item.name} overrides {base.__qualname__}"))
    return sites


def _sites(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    has_classes = any(isinstance(node, ast.ClassDef) for node in tree.body)
    module = importlib.import_module(_module_name(path)) if has_classes and _imports_lightning(tree) else None
    found = _attribute_sites(tree) + _import_sites(tree) + _override_sites(tree, module)
    return [f"{_relative(path)}:{line}: {text}" for line, text in sorted(set(found))]


@pytest.mark.parametrize("path", _files(), ids=_relative)
def test_no_private_lightning_api(path):
    sites = _sites(path)
    if _relative(path) in PENDING:
        assert sites, f"{_relative(path)} uses no private Lightning API any more: delete it from PENDING"
        return
    assert not sites, "private Lightning API used:\n" + "\n".join(sites)


def test_the_checker_finds_what_it_looks_for(tmp_path):
    source = """
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.cli import LightningCLI


def progress(trainer, pl_module):
    a = trainer._accelerator_connector.use_distributed_sampler
    b = pl_module.trainer._logger_connector
    c = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    d = trainer.fit_loop.max_epochs
    e = trainer.global_step, trainer.fit_loop  # public
    return a, b, c, d, e


class CLI(LightningCLI):
    def _parse_ckpt_path(self):
        pass

    def _add_instantiators(self):
        pass

    def _mine(self):
        pass
"""
    tree = ast.parse(source)
    found = [text for _, text in _attribute_sites(tree) + _import_sites(tree)]
    assert "trainer._accelerator_connector" in found
    assert "pl_module.trainer._logger_connector" in found
    assert "trainer.fit_loop.epoch_loop (an attribute of a Lightning loop)" in found
    assert "trainer.fit_loop.max_epochs (an attribute of a Lightning loop)" in found
    assert "from lightning.fabric.utilities.optimizer import _optimizers_to_device" in found
    assert not [text for text in found if "global_step" in text or text == "trainer.fit_loop"]
    path = tmp_path / "fake_cli.py"
    path.write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        overrides = [text for _, text in _override_sites(tree, importlib.import_module("fake_cli"))]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fake_cli", None)
    assert overrides == ["def _parse_ckpt_path", "CLI._add_instantiators overrides LightningCLI"]


def test_the_strategy_does_not_import_the_layers_above_it():
    """One direction only: the module, the data and the callbacks import the strategy, never the reverse."""
    tree = ast.parse((PACKAGE / "distributed" / "strategy.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    above = ("lightning_mosaic.module", "lightning_mosaic.callbacks", "lightning_mosaic.data", "lightning_mosaic.tasks")
    assert not [name for name in imported if name.startswith(above)]
