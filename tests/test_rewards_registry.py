"""The query_type registry: decorator, duplicates, unknown names, plugin modules and files."""

import runpy
import sys
import textwrap
from pathlib import Path

import pytest

from medverl.data.converters import PrepOptions, convert_rl
from medverl.rewards import (
    InvalidReference,
    PluginError,
    UnknownQueryType,
    Verdict,
    check_reference,
    compute_score,
    register,
)
from medverl.rewards import registry as registry_module
from medverl.rewards.registry import REGISTRY, Registry

REPO = Path(__file__).resolve().parents[1]


def _dummy(answer: str, golds: tuple[str, ...]) -> float:
    """Dummy reward."""
    return 1.0


def test_register_and_get() -> None:
    registry = Registry()
    registry.register("dummy", extra_info_keys=["options"])(_dummy)
    spec = registry.get("dummy")
    assert spec.fn is _dummy and spec.extra_info_keys == ("options",)
    assert spec.doc == "Dummy reward."
    assert registry.names() == ["dummy"]


def test_duplicate_name_raises_naming_the_owner() -> None:
    registry = Registry()
    registry.register("dummy")(_dummy)
    registry.register("dummy")(_dummy)  # the same function again (a re-imported module) is harmless
    with pytest.raises(ValueError, match="already registered by .*_dummy"):
        registry.register("dummy")(lambda answer, golds: 0.0)


@pytest.mark.parametrize("name", ["", None])
def test_empty_name_raises(name: object) -> None:
    with pytest.raises(ValueError):
        Registry().register(name)  # type: ignore[arg-type]


def test_unknown_name_lists_known_and_closest() -> None:
    registry = Registry()
    registry.register("yes_no")(_dummy)
    registry.register("jaccard")(_dummy)
    with pytest.raises(UnknownQueryType) as err:
        registry.get("yesno")
    assert str(err.value).startswith("unknown query_type 'yesno'. Did you mean 'yes_no'? Known query types: jaccard, yes_no.")
    with pytest.raises(UnknownQueryType) as err:
        registry.get("zzz")
    assert "Did you mean" not in str(err.value)


def test_builtins_are_registered() -> None:
    assert {"multiple_choice", "jaccard", "exact_match", "yes_no"} <= set(REGISTRY.names())
    assert all(s.source == "built-in" and s.doc for s in REGISTRY.specs() if s.fn.__module__.startswith("medverl."))


def _write_plugin(path: Path, name: str) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            from medverl.rewards import register

            @register({name!r})
            def reward(answer, golds):
                \"\"\"Length of the answer equals the gold's.\"\"\"
                return float(len(answer) == len(golds[0]))
            """
        )
    )
    return path


def test_plugin_file_loads_once(tmp_path: Path, monkeypatch) -> None:
    fresh = Registry()
    monkeypatch.setattr("medverl.rewards.registry.REGISTRY", fresh)
    plugin = str(_write_plugin(tmp_path / "lengths.py", "same_length"))
    for spelling in (plugin, plugin, str(tmp_path / "." / "lengths.py")):
        # loaded on the first call only: a second load would raise "already registered"
        result = compute_score(
            solution_str="<answer>abc</answer>",
            ground_truth="xyz",
            extra_info={"query_type": "same_length"},
            plugins=[spelling],
        )
        assert result["acc"] == 1.0
    assert fresh.get("same_length").source == plugin
    assert fresh.get("same_length").doc == "Length of the answer equals the gold's."


def test_plugin_module_by_name(tmp_path: Path, monkeypatch) -> None:
    fresh = Registry()
    monkeypatch.setattr("medverl.rewards.registry.REGISTRY", fresh)
    _write_plugin(tmp_path / "my_lab_rewards.py", "lab_length")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = compute_score(
        solution_str="<answer>ab</answer>",
        ground_truth="cd",
        extra_info={"query_type": "lab_length"},
        plugins="my_lab_rewards",
    )
    assert result["score"] == 1.0


@pytest.mark.parametrize("kind", ["module", "file"])
def test_a_plugin_is_imported_once_per_process_into_the_process_wide_registry(kind: str, tmp_path: Path, monkeypatch) -> None:
    path = _write_plugin(tmp_path / f"once_{kind}.py", f"once_{kind}")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = f"once_{kind}" if kind == "module" else str(path)
    REGISTRY.load_plugins([plugin])
    fn = REGISTRY.get(f"once_{kind}").fn
    REGISTRY.load_plugins([plugin])  # a second load imports nothing, so nothing registers twice
    assert REGISTRY.get(f"once_{kind}").fn is fn
    assert registry_module.plugin_module_name(plugin) in sys.modules


def test_restoring_a_snapshot_forgets_rewards_and_names_the_plugin_modules_to_unimport(tmp_path: Path) -> None:
    saved = REGISTRY.snapshot()
    plugin = str(_write_plugin(tmp_path / "forgotten.py", "forgotten"))
    REGISTRY.load_plugins([plugin])
    REGISTRY.register("dummy")(_dummy)
    assert REGISTRY.restore(saved) == [registry_module.plugin_module_name(plugin)]
    assert "forgotten" not in REGISTRY.names() and "dummy" not in REGISTRY.names()
    sys.modules.pop(registry_module.plugin_module_name(plugin))
    REGISTRY.load_plugins([plugin])  # imported anew
    assert "forgotten" in REGISTRY.names()


@pytest.mark.parametrize(
    ("plugin", "match"),
    [
        ("/nonexistent/dir/rewards.py", "not found"),
        ("no_such_module_for_medverl", "failed to import"),
        ("broken.py", "failed to load: .*SyntaxError|failed to load: .*invalid syntax"),
    ],
)
def test_plugin_errors_are_clear(plugin: str, match: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("medverl.rewards.registry.REGISTRY", Registry())
    if plugin == "broken.py":
        (tmp_path / plugin).write_text("def reward(:\n")
        plugin = str(tmp_path / plugin)
    with pytest.raises(PluginError, match=match):
        compute_score(solution_str="", ground_truth="x", extra_info={"query_type": "x"}, plugins=[plugin])


def test_example_user_reward_in_reward_fns(monkeypatch) -> None:
    fresh = Registry()
    monkeypatch.setattr("medverl.rewards.registry.REGISTRY", fresh)
    runpy.run_path(str(REPO / "reward_fns" / "icd10_example.py"))  # registers into the fresh registry
    spec = fresh.get("icd10")
    cases = {"J18.9": 1.0, "j189": 1.0, "J18.1": 0.5, "K35.8": 0.0, "J18.9 or J15.9": 0.0}
    for answer, acc in cases.items():
        verdict = spec.fn(answer, ("J18.9",))
        assert isinstance(verdict, Verdict) and verdict.acc == acc, answer


def _letters_only(golds: tuple[str, ...]) -> None:
    if not all(g.isalpha() for g in golds):
        raise ValueError(f"{golds[0]!r} is not a word: write the organ's name")


def _strict(golds: tuple[str, ...]) -> None:
    raise InvalidReference("no organ answer can match this reference")


def _buggy(golds: tuple[str, ...]) -> None:
    raise RuntimeError("oops")


@pytest.mark.parametrize(
    ("validate", "reason"),
    [
        (_letters_only, "'42' is not a word: write the organ's name"),  # a user's plain ValueError
        (_strict, "no organ answer can match this reference"),  # the documented exception
    ],
)
def test_a_validate_that_raises_value_error_rejects_the_reference_with_its_message(validate, reason: str) -> None:
    register("organ", validate=validate)(_dummy)
    with pytest.raises(InvalidReference, match=reason):
        check_reference("42", {"query_type": "organ"})
    reject = convert_rl({"question": "Which organ?", "answer": "42", "query_type": "organ"}, 0, "o.jsonl:1",
                        PrepOptions())
    assert (reject.code, reject.reason) == ("invalid_reference", reason)


def test_any_other_error_of_a_validate_is_a_bug_in_it() -> None:
    register("organ", validate=_buggy)(_dummy)
    with pytest.raises(RuntimeError, match="oops"):
        check_reference("liver", {"query_type": "organ"})
