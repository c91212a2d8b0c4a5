"""Shared fixtures: every test starts from the registries as imported (the built-ins)."""

import sys
from pathlib import Path

import pytest

import medverl.data.converters  # noqa: F401  (each module that fills a table is imported before the snapshot)
import medverl.eval.benchmarks  # noqa: F401
import medverl.eval.compat  # noqa: F401
import medverl.models  # noqa: F401
import medverl.prompts  # noqa: F401
import medverl.qc.rules  # noqa: F401
from medverl import registry
from medverl.rewards import registry as rewards


@pytest.fixture(autouse=True)
def isolated_registry() -> rewards.Registry:
    """Every registry (rewards, converters, benchmarks, QC checks, templates), returned to its state after the test:
    what the test registered is forgotten and the plugin modules it loaded are unimported, so another test loads
    them anew."""
    saved = registry.snapshot_all()
    yield rewards.REGISTRY
    for module in registry.restore_all(saved):
        sys.modules.pop(module, None)


TINY_FAMILIES = ("qwen2.5-vl", "qwen3-vl")


class TinyModels:
    """Tiny random models (``medverl.training.tiny_model``) built at most once per test session; read-only."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[tuple[str, str, int], Path] = {}

    def processor(self, family: str = "qwen2.5-vl") -> Path:
        """Tokenizer, processor and config (no weights)."""
        return self._build("processor", family, 0)

    def model(self, family: str = "qwen2.5-vl", seed: int = 0) -> Path:
        """:meth:`processor` plus random weights from `seed`."""
        return self._build("model", family, seed)

    def _build(self, kind: str, family: str, seed: int) -> Path:
        from medverl.training.tiny_model import save_tiny_model, save_tiny_processor

        key = (kind, family, seed)
        if key not in self._built:
            directory = self.root / f"{kind}_{family}_{seed}"
            self._built[key] = (save_tiny_model(directory, family, seed=seed) if kind == "model"
                                else save_tiny_processor(directory, family))
        return self._built[key]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Every tiny model a test asks for, by family and seed."""
    return TinyModels(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_processor(tiny_models: TinyModels) -> Path:
    """A tiny Qwen2.5-VL tokenizer, processor and config directory (no weights)."""
    return tiny_models.processor()


@pytest.fixture(scope="session")
def tiny_model(tiny_models: TinyModels) -> Path:
    """A tiny random Qwen2.5-VL model directory (weights from seed 0)."""
    return tiny_models.model()


@pytest.fixture(scope="session", params=TINY_FAMILIES)
def family_processor(request: pytest.FixtureRequest, tiny_models: TinyModels) -> tuple[str, Path]:
    """``(family, directory)``: the tiny tokenizer, processor and config of each model family in turn."""
    return request.param, tiny_models.processor(request.param)
