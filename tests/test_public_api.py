"""The public front door: `engine.__all__` and the subpackages' `__all__`."""

from __future__ import annotations

import importlib

import pytest

import engine


@pytest.mark.parametrize("module", ["engine", "engine.api", "engine.simulator", "engine.errors"])
def test_all_is_sorted_and_every_name_exists(module: str) -> None:
    """Each public module lists its names sorted, and every listed name is importable."""
    imported = importlib.import_module(module)
    names = list(imported.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(imported, name), f"{module}.{name} is listed but missing"


def test_the_library_entry_points_are_public() -> None:
    """What the README's library example uses is importable from `engine` itself."""
    for name in ("Account", "Credentials", "MigrationConfig", "migrate", "plan_migration", "audit"):
        assert name in engine.__all__


def test_no_public_name_leaks_from_a_private_module() -> None:
    """Every public class of `engine` names a documented, non-underscore module."""
    for name in engine.__all__:
        module = getattr(getattr(engine, name), "__module__", "engine")
        assert not any(part.startswith("_") for part in module.split(".")), (name, module)
