"""Shared fixtures: every test starts from the reward registry as imported (the built-ins)."""

import sys

import pytest

from medverl.rewards import registry


@pytest.fixture(autouse=True)
def isolated_registry() -> registry.Registry:
    """The process-wide registry, returned to its state after the test: what the test registered is forgotten and
    the plugin modules it loaded are unimported, so another test loads them anew."""
    saved = registry.REGISTRY.snapshot()
    yield registry.REGISTRY
    for module in registry.REGISTRY.restore(saved):
        sys.modules.pop(module, None)
