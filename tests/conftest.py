"""Shared fixtures: every test gets its own copy of the reward registry."""

import pytest

from medverl.rewards import registry


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> registry.Registry:
    """A fresh registry holding the built-ins, so plugins one test loads never leak into another."""
    fresh = registry.Registry()
    for spec in registry.REGISTRY.specs():
        fresh.register(spec.name, extra_info_keys=spec.extra_info_keys, validate=spec.validate)(spec.fn)
    monkeypatch.setattr(registry, "REGISTRY", fresh)
    return fresh
