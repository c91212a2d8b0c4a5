"""A non-editable install works without the repository: the wheel carries the recipes, the prompt files and the
verl plugin entry point."""

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"cpt.yaml", "grpo.yaml", "grpo_rewards.yaml", "sft_stage1.yaml", "common/rewards.yaml", "common/sft.yaml"}
PROMPTS = {"think_answer", "think_prefilled", "qc_rubric_v1", "answer_judge_v1"}

CHECK = """
import importlib.metadata, json, sys
from pathlib import Path
import medverl
from medverl.prompts import TEMPLATES, load_template, read_prompt
site = Path(sys.argv[1])
recipes = medverl.recipes_dir()
wheel = next(importlib.metadata.distributions(path=[str(site)]))
print(json.dumps({
    "module": medverl.__file__,
    "recipes": str(recipes),
    "files": sorted(str(p.relative_to(recipes)) for p in recipes.rglob("*") if p.is_file()),
    "prompts": {name: len(read_prompt(name)) for name in sys.argv[2:]},
    "templates": {name: "{question}" in load_template(name) for name in TEMPLATES.names()},
    "verl_plugins": [ep.value for ep in wheel.entry_points.select(group="verl.plugins")],
}))
"""


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a clean copy of the sources, installed into a directory of its own (no dependencies)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("medverl", "recipes"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "wheel"), str(source)], root)
    wheel = next((root / "wheel").glob("medverl-*.whl"))
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(root / "site"), str(wheel)], root)
    return root


def test_the_installed_package_has_its_recipes_prompts_and_verl_plugin(installed: Path) -> None:
    site = installed / "site"
    # -S: none of the venv's .pth files, so not the editable install's finder; the dependencies come from
    # site-packages, medverl only from the wheel's directory, the working directory is not the repository
    env = {"PYTHONPATH": f"{site}:{sysconfig.get_paths()['purelib']}", "PATH": str(Path(sys.executable).parent)}
    python = [sys.executable, "-S"]
    found = json.loads(_run([*python, "-c", CHECK, str(site), *sorted(PROMPTS)], installed, env))
    assert Path(found["module"]).parent == site / "medverl"
    assert Path(found["recipes"]) == site / "medverl" / "recipes"
    files = set(found["files"])
    pipelines = {f"pipelines/{p.name}" for p in (REPO / "recipes" / "pipelines").glob("*.yaml")}
    assert RECIPES <= files and pipelines and pipelines <= files, sorted(files)
    assert all(found["prompts"].values()) and set(found["prompts"]) == PROMPTS
    assert found["templates"] == {"think_answer": True, "think_prefilled": True}
    assert found["verl_plugins"] == ["medverl.cpu.plugin"]
    path = _run([*python, "-m", "medverl", "recipes", "--path"], installed, env).strip()
    assert path == found["recipes"]
