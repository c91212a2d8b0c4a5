"""medverl.registry: named tables that other packages extend by decorator or entry point, and the tables built on it
(record formats, benchmarks, QC checks, prompt templates) used from a package of the user's."""

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medverl.cli import main
from medverl.data.converters import CONVERTERS
from medverl.errors import ConfigError
from medverl.eval.benchmarks import READERS
from medverl.prompts import TEMPLATES, load_template, register_template
from medverl.qc.rules import CHECKS, text_checks
from medverl.registry import PluginError, Registry, UnknownName


def _km(x: float) -> float:
    return x * 1000


def _mm(x: float) -> float:
    return x / 1000


def _install(root: Path, name: str, entry_points: str, modules: dict[str, str]) -> dict[str, str]:
    """A package installed the way pip leaves one: its modules and a dist-info with `entry_points` on a path
    entry; returns the environment of a process that has it on its path."""
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}


def _medverl(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`medverl ARGS` in a new process, run from a directory of its own (``-m`` puts the working directory on the
    path)."""
    (cwd / "work").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "medverl", *args], capture_output=True, text=True, env=env,
                          cwd=cwd / "work", check=False, timeout=300)


def test_register_get_and_names() -> None:
    units = Registry("unit", "medverl_test.units")
    units.register("km")(_km)
    units.add("mm", _mm)
    assert units.get("km") is _km and units.names() == ["km", "mm"] and "mm" in units and "cm" not in units
    assert units.items() == [("km", _km), ("mm", _mm)]


def test_a_name_is_registered_once() -> None:
    units = Registry("unit", "medverl_test.units")
    units.register("km")(_km)
    units.register("km")(_km)  # the same object again (a re-imported module) is harmless
    with pytest.raises(ValueError, match=r"unit 'km' is already registered by .*_km; pick another name"):
        units.register("km")(_mm)
    with pytest.raises(ValueError, match="non-empty string"):
        units.add("", _km)


def test_unknown_names_say_the_closest_and_the_known_ones() -> None:
    units = Registry("unit", "medverl_test.units", how="Add one with @units.register(name).")
    units.add("kilometre", _km)
    units.add("millimetre", _mm)
    with pytest.raises(UnknownName) as error:
        units.get("kilometer")
    assert str(error.value) == ("unknown unit 'kilometer'. Did you mean 'kilometre'? Known units: kilometre, "
                                "millimetre. Add one with @units.register(name).")
    assert "Did you mean" not in units.unknown_message("zzz")


def test_entries_must_be_of_the_table_type() -> None:
    checks = Registry("QC check", "medverl_test.checks", entry_type=tuple)
    with pytest.raises(TypeError, match="QC check 'x' must be a tuple, got function"):
        checks.add("x", _km)


def test_entry_points_load_lazily_and_a_broken_one_is_a_plugin_error(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, "units-pkg", "[medverl_test.units]\ninch = units_pkg:inch\n",
             {"units_pkg": "def inch(x):\n    return x * 0.0254\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    units = Registry("unit", "medverl_test.units")
    units.add("km", _km)
    assert units.get("km") is _km and units.snapshot().entry_points_loaded is False  # found: nothing else loaded
    assert units.get("inch")(100) == pytest.approx(2.54)
    assert units.names() == ["inch", "km"]

    _install(tmp_path, "broken-pkg", "[medverl_test.broken]\nnope = no_such_module:thing\n", {})
    with pytest.raises(PluginError, match="entry point 'nope' = 'no_such_module:thing' of group 'medverl_test.broken'"):
        Registry("unit", "medverl_test.broken").names()


def test_restoring_a_snapshot_forgets_what_was_registered() -> None:
    units = Registry("unit", "medverl_test.units")
    units.add("km", _km)
    saved = units.snapshot()
    units.add("mm", _mm)
    assert units.restore(saved) == []
    assert units.names() == ["km"]


def test_the_tables_hold_the_built_ins() -> None:
    assert {"rl", "sft", "caption", "interleaved"} <= set(CONVERTERS.names())
    assert [CONVERTERS.get(k).writes for k in ("rl", "sft", "caption", "interleaved")] == ["rl", "sft", "cpt", "cpt"]
    assert {"vqa_rad", "slake", "path_vqa", "pmc_vqa", "omnimedvqa", "mmmu_hm", "medxpertqa_mm"} <= set(READERS.names())
    assert {"text_truncated", "image_blank", "modality_mismatch"} <= set(CHECKS.names())
    assert {"think_answer", "think_prefilled"} <= set(TEMPLATES.names())


def test_a_registered_qc_text_check_runs_with_the_built_ins() -> None:
    from medverl.qc.rules import register

    @register("no_laterality", lowers=("completeness",))
    def no_laterality(text: str) -> bool:
        return "left" not in text.lower() and "right" not in text.lower()

    assert text_checks("A nodule in the upper lobe, 2 cm across.") == ["no_laterality"]
    with pytest.raises(ValueError, match="medical_correctness"):
        register("judge_only", lowers=("medical_correctness",))


def test_unknown_template_names_the_closest() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'think_answer'"):
        load_template("think_answr")


LAB_FORMATS = '''
    from medverl.data.converters import convert_rl, register
    from medverl.data.job import Reject


    @register("lab_vqa", writes="rl")
    def convert_lab_vqa(record, index, source, options):
        """The lab's {"q", "a"} records as RL rows."""
        if "q" not in record:
            raise Reject("missing_field", "a lab_vqa record needs 'q'")
        return convert_rl.read({"question": record["q"], "answer": record.get("a"), "query_type": "yes_no"},
                               index, source, options)
'''


def test_a_record_format_from_an_installed_package_runs_in_prep(tmp_path: Path) -> None:
    """A package names its module in group medverl.converters; `medverl prep` offers the format and runs it."""
    env = _install(tmp_path, "lab-formats", "[medverl.converters]\nlab = lab_formats\n", {"lab_formats": LAB_FORMATS})
    source = tmp_path / "lab.jsonl"
    source.write_text(json.dumps({"q": "Is there a fracture?", "a": "no"}) + "\n" + json.dumps({"a": "yes"}) + "\n")
    done = _medverl(["prep", "lab_vqa", str(source), "--output", str(tmp_path / "out")], env, tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["read"], manifest["written"], manifest["rejected_by_reason"]) == (2, 1, {"missing_field": 1})
    reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
    assert (reject["source"], reject["code"], reject["reason"]) == ("lab.jsonl:2", "missing_field",
                                                                    "a lab_vqa record needs 'q'")
    row = pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()[0]
    assert "Is there a fracture?" in row["prompt"][-1]["content"] and row["reward_model"]["ground_truth"] == "no"

    absent = _medverl(["prep", "lab_vqa", str(source), "--output", str(tmp_path / "o2")], dict(os.environ), tmp_path)
    assert absent.returncode == 2 and "invalid choice: 'lab_vqa'" in absent.stderr  # control: not installed


LAB_BENCHMARK = '''
    import json


    def read_lab_bench(source, options):
        """The lab's private test set: one JSON record per line of questions.jsonl."""
        for line in (source / "questions.jsonl").read_text().splitlines():
            item = json.loads(line)
            yield {"question": item["q"], "answer": item["a"], "query_type": "yes_no", "data_source": "lab_bench"}
'''


def test_a_benchmark_from_an_installed_package_runs_in_eval_prepare(tmp_path: Path) -> None:
    """A package names its reader in group medverl.benchmarks; `medverl eval prepare` reads it."""
    env = _install(tmp_path, "lab-bench", "[medverl.benchmarks]\nlab_bench = lab_bench:read_lab_bench\n",
                   {"lab_bench": LAB_BENCHMARK})
    source = tmp_path / "distribution"
    source.mkdir()
    (source / "questions.jsonl").write_text("".join(json.dumps({"q": f"Effusion {i}?", "a": "yes"}) + "\n"
                                                    for i in range(3)))
    done = _medverl(["eval", "prepare", "lab_bench", "--source", str(source), "--output", str(tmp_path / "out")],
                    env, tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["read"], manifest["written"], manifest["benchmark"]) == (3, 3, "lab_bench")
    rows = pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()
    assert [r["extra_info"]["split"] for r in rows] == ["test"] * 3 and rows[2]["data_source"] == "lab_bench"


def test_a_template_registered_by_decorator_is_used_by_prep(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    @register_template("terse", reward_options={"think_prefilled": False})
    def terse() -> str:
        return "Q: {question}{options}\n{answer_hint}"

    source = tmp_path / "vqa.jsonl"
    source.write_text(json.dumps({"question": "Is the heart enlarged?", "answer": "no", "query_type": "yes_no"}) + "\n")
    assert main(["prep", "rl", str(source), "--output", str(tmp_path / "out"), "--template", "terse"]) == 0
    capsys.readouterr()
    row = pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()[0]
    assert row["prompt"][-1]["content"] == "Q: Is the heart enlarged?\nAnswer yes or no."
    template = json.loads((tmp_path / "out" / "manifest.json").read_text())["template"]
    assert (template["name"], template["reward_options"]) == ("terse", {"think_prefilled": False})


def test_a_format_registered_by_decorator_converts_in_worker_processes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes start fresh: they import the module whose decorator registered the format."""
    from medverl.data.converters import PrepOptions
    from medverl.data.runner import PrepJob, run_prep

    (tmp_path / "lab_formats_workers.py").write_text(textwrap.dedent(LAB_FORMATS).replace('"lab_vqa"', '"lab_vqa_w"'))
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers get this process's sys.path
    module = importlib.import_module("lab_formats_workers")
    monkeypatch.setitem(sys.modules, "lab_formats_workers", module)  # unimported after the test, with its format
    source = tmp_path / "lab.jsonl"
    source.write_text("".join(json.dumps({"q": f"Effusion {i}?", "a": "yes"}) + "\n" for i in range(4)))
    manifest = run_prep(PrepJob("lab_vqa_w", (str(source),), tmp_path / "out", PrepOptions(), rows_per_shard=2),
                        workers=2, progress=False)
    assert (manifest["read"], manifest["written"]) == (4, 4)
