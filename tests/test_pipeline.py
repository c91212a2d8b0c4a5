"""`medverl pipeline`: dry run, data checks, stage order, a failing stage, resume — with a stand-in trainer.

The stand-in (tests' launcher) receives the exact Hydra arguments the real trainers would, and writes a checkpoint
the way verl's checkpoint handler lays it out, so the pipeline's own logic runs for real.
"""

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medverl.cli import main
from medverl.pipeline import Pipeline, PipelineError, run_pipeline
from medverl.stages import KINDS

REPO = Path(__file__).resolve().parent.parent

FAKE_TRAINER = r'''
import json, os, sys
from pathlib import Path
from medverl.stages import KINDS
# Hydra reads a quoted value as the text between the quotes
args = {k: v.strip("'") for k, v in (a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("--"))}
name = args["trainer.experiment_name"]
kind = KINDS["grpo"] if sys.argv[1] == "ppo" else KINDS["sft"]
with open(os.environ["TRAINER_CALLS"], "a") as f:
    f.write(json.dumps({"stage": name, "model": args[kind.model_key]}) + "\n")
print(f"training {name}")
if name == os.environ.get("HANG_STAGE"):  # a trainer that started a worker of its own, then runs until stopped
    import subprocess, time
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(os.environ["HANG_PIDS"], "w").write(f"{os.getpid()} {worker.pid}")
    time.sleep(600)
if name == os.environ.get("FAIL_STAGE"):
    print("CUDA out of memory", file=sys.stderr)
    sys.exit(3)
model = kind.checkpoint_model(Path(args["trainer.default_local_dir"]), 7)
os.makedirs(model)
open(os.path.join(model, "config.json"), "w").write("{}")
open(os.path.join(model, "model.safetensors"), "wb").write(b"")
open(os.path.join(args["trainer.default_local_dir"], "latest_checkpointed_iteration.txt"), "w").write("7")
# metrics as verl's file logger writes them, and GRPO rollouts as verl dumps them
with open(os.environ["VERL_FILE_LOGGER_PATH"], "w") as f:
    for step in (1, 2):
        data = {"critic/score/mean": 0.1 * step} if kind.name == "grpo" else {"train/loss": 3.0 / step}
        f.write(json.dumps({"step": step, "data": data}) + "\n")
if "trainer.rollout_data_dir" in args:
    os.makedirs(args["trainer.rollout_data_dir"])
    for step, outputs in ((1, ["no tags", "<think>x</think><answer>B</answer>"]), (2, ["<answer>A</answer>"] * 2)):
        with open(os.path.join(args["trainer.rollout_data_dir"], f"{step}.jsonl"), "w") as f:
            f.writelines(json.dumps({"output": o, "score": 0.0, "step": step}) + "\n" for o in outputs)
'''


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """A project directory with the example data prepared, a stand-in trainer and its call log."""
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    for args in (
        ["caption", "examples/data/captions.jsonl", "--output", "data/cpt", "--max-pixels", "200704"],
        ["sft", "examples/data/sft.jsonl", "--output", "data/sft", "--max-pixels", "401408"],
        ["rl", "examples/data/rl.jsonl", "--output", "data/rl", "--max-pixels", "802816"],
        ["rl", "examples/data/rl_val.jsonl", "--output", "data/rl_val", "--max-pixels", "802816"],
    ):
        assert main(["prep", *args, "--image-root", "examples/data/images"]) == 0
    (tmp_path / "fake_trainer.py").write_text(FAKE_TRAINER)
    monkeypatch.setenv("TRAINER_CALLS", str(tmp_path / "calls.jsonl"))
    return tmp_path


def _config(workdir: Path, **changes) -> Path:
    fake = [sys.executable, str(workdir / "fake_trainer.py")]
    fake_ppo = [*fake, "ppo"]
    config = {
        "model": "Qwen/Qwen2.5-VL-3B-Instruct",
        "output": "runs/test",
        "gpus_per_node": 1,
        "launchers": {"sft": fake, "ppo": fake_ppo},
        "stages": [
            {"name": "cpt", "recipe": "cpt", "train": ["data/cpt"], "max_pixels": 200704},
            {"name": "sft1", "recipe": "sft_stage1", "train": ["data/sft"], "max_pixels": 401408,
             "overrides": ["optim.lr=3e-6"]},
            {"name": "grpo", "recipe": "grpo", "train": ["data/rl"], "val": ["data/rl_val"], "max_pixels": 802816},
        ],
        **changes,
    }
    path = workdir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _calls(workdir: Path) -> list[dict]:
    path = workdir / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_dry_run_prints_the_exact_commands(workdir: Path, capsys) -> None:
    config = Pipeline.load(REPO / "recipes" / "pipelines" / "qwen25_vl_3b_8gpu.yaml")
    assert config.kind(config.stages[0]).name == "cpt" and config.kind(config.stages[-1]).name == "grpo"
    assert main(["pipeline", str(_config(workdir, launchers={})), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = {line.split("] ", 1)[0][1:]: shlex.split(line.split("] ", 1)[1]) for line in lines}
    assert list(commands) == ["cpt", "sft1", "grpo"] and not _calls(workdir)
    output = workdir / "runs" / "test"
    cpt = commands["cpt"]
    assert cpt[:7] == [sys.executable, "-m", "medverl.training.launch", "--nnodes=1", "--nproc_per_node=1",
                       "--standalone", "-m"]
    assert cpt[7] == "verl.trainer.sft_trainer" and cpt[cpt.index("--config-name") + 1] == "cpt"
    assert f"data.train_files=['{workdir}/data/cpt/part-00000.parquet']" in cpt
    assert "model.path='Qwen/Qwen2.5-VL-3B-Instruct'" in cpt
    assert f"trainer.default_local_dir='{output}/cpt/checkpoints'" in cpt
    assert f"model.path='{output}/cpt/model'" in commands["sft1"] and commands["sft1"][-1] == "optim.lr=3e-6"
    grpo = commands["grpo"]
    assert grpo[:3] == [sys.executable, "-m", "verl.trainer.main_ppo"]
    assert f"actor_rollout_ref.model.path='{output}/sft1/model'" in grpo and "data.image_patch_size=14" in grpo
    assert f"data.val_files=['{workdir}/data/rl_val/part-00000.parquet']" in grpo
    assert not output.exists()  # a dry run writes nothing


def test_stages_run_in_order_and_hand_on_their_models(workdir: Path, capsys) -> None:
    assert main(["pipeline", str(_config(workdir))]) == 0
    output = workdir / "runs" / "test"
    assert [c["stage"] for c in _calls(workdir)] == ["cpt", "sft1", "grpo"]
    assert [c["model"] for c in _calls(workdir)] == [
        "Qwen/Qwen2.5-VL-3B-Instruct", str(output / "cpt" / "model"), str(output / "sft1" / "model")]
    assert (output / "grpo" / "model").resolve() == KINDS["grpo"].checkpoint_model(output / "grpo" / "checkpoints", 7)
    assert "training sft1" in (output / "logs" / "sft1.log").read_text()
    state = json.loads((output / "pipeline_state.json").read_text())
    assert list(state["stages"]) == ["cpt", "sft1", "grpo"]
    assert main(["pipeline", str(_config(workdir))]) == 0  # all finished: nothing runs again
    assert len(_calls(workdir)) == 3 and "[grpo] finished before" in capsys.readouterr().out


def test_metrics_of_every_stage_are_gathered_and_drawn(workdir: Path) -> None:
    assert main(["pipeline", str(_config(workdir))]) == 0
    output = workdir / "runs" / "test"
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("cpt", 1), ("cpt", 2), ("sft1", 1), ("sft1", 2),
                                                       ("grpo", 1), ("grpo", 2)]
    assert rows[1]["train/loss"] == 1.5
    grpo = [r for r in rows if r["stage"] == "grpo"]
    # the format rule of the reward: one of two at step 1, both at step 2
    assert [r["medverl/format_rate"] for r in grpo] == [0.5, 1.0]
    assert [r["critic/score/mean"] for r in grpo] == [0.1, 0.2]
    assert (output / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| grpo |" in (output / "summary.md").read_text()


def test_cpu_runs_the_same_entry_points_with_the_cpu_overrides(workdir: Path, capsys) -> None:
    assert main(["pipeline", str(_config(workdir, launchers={})), "--dry-run", "--cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = {line.split("] ", 1)[0][1:]: shlex.split(line.split("] ", 1)[1]) for line in lines}
    assert commands["cpt"][2:4] == ["medverl.training.launch", "--nnodes=1"]
    sft_cpu, ppo_cpu = KINDS["cpt"].cpu_arguments(), KINDS["grpo"].cpu_arguments()
    assert commands["cpt"][-len(sft_cpu):] == list(sft_cpu)
    assert commands["grpo"][1:3] == ["-m", "verl.trainer.main_ppo"]
    assert commands["grpo"][-len(ppo_cpu):] == list(ppo_cpu)
    assert f"ray_kwargs.ray_init.num_cpus={max(os.cpu_count(), 16)}" in commands["grpo"]
    # the stage's own overrides come last, so they win over the CPU ones
    assert commands["sft1"][-1] == "optim.lr=3e-6"
    pipeline = dataclasses.replace(Pipeline.load(_config(workdir)), device="cpu")
    assert pipeline.environment(pipeline.stages[0])["VERL_PLATFORM"] == "cpu"


def test_the_environment_is_checked_before_anything_runs(workdir: Path, capsys, monkeypatch) -> None:
    import importlib.util

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["pipeline", str(_config(workdir, launchers={}))]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU is visible" in err and "--cpu" in err and not _calls(workdir)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "msgspec" else find_spec(name, *a))
    assert main(["pipeline", str(_config(workdir, launchers={})), "--cpu"]) == 2
    assert "GRPO on CPU needs msgspec: pip install -e '.[cpu-train]'" in capsys.readouterr().err


def test_a_failing_stage_stops_with_its_log_and_the_rerun_resumes_there(workdir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FAIL_STAGE", "sft1")
    assert main(["pipeline", str(_config(workdir))]) == 1
    err = capsys.readouterr().err
    log = workdir / "runs" / "test" / "logs" / "sft1.log"
    assert f"stage sft1 failed (exit code 3); its log: {log}" in err
    assert "CUDA out of memory" in log.read_text()
    assert [c["stage"] for c in _calls(workdir)] == ["cpt", "sft1"]
    monkeypatch.delenv("FAIL_STAGE")
    assert main(["pipeline", str(_config(workdir))]) == 0
    assert [c["stage"] for c in _calls(workdir)] == ["cpt", "sft1", "sft1", "grpo"]  # cpt was not run again


def test_a_changed_finished_stage_needs_from(workdir: Path, capsys) -> None:
    assert main(["pipeline", str(_config(workdir))]) == 0
    changed = _config(workdir)
    text = changed.read_text().replace("optim.lr=3e-6", "optim.lr=1e-6")
    changed.write_text(text)
    assert main(["pipeline", str(changed)]) == 2  # a configuration error
    assert "stage sft1 was finished with another configuration" in capsys.readouterr().err
    assert main(["pipeline", str(changed), "--from", "sft1"]) == 0
    assert [c["stage"] for c in _calls(workdir)] == ["cpt", "sft1", "grpo", "sft1", "grpo"]
    output = workdir / "runs" / "test"
    assert len(list(output.glob("sft1.before-*"))) == 1  # verl would resume the old checkpoints: kept aside


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"stages": [{"name": "cpt", "recipe": "cpt", "train": ["data/sft"]}]}, "stage cpt \\(cpt\\): data/sft holds sft data"),
        ({"stages": [{"name": "cpt", "recipe": "cpt", "train": ["data/cpt"], "max_pixels": 802816}]},
         "the schedule says max_pixels=802816, data/cpt was prepared with --max-pixels 200704"),
        ({"stages": [{"name": "cpt", "recipe": "cpt", "train": ["data/none"]}]}, "data/none: no such directory"),
        ({"stages": [{"name": "rl", "recipe": "grpo", "train": ["data/rl"], "val": ["data/rl_val"],
                      "overrides": ["reward.custom_reward_function.reward_kwargs.think_prefilled=true"]}]},
         "stage rl: data/rl was prepared with the think_answer prompt template, which is scored with "
         "reward_kwargs.think_prefilled=false"),
        ({"stages": [{"name": "rl", "recipe": "grpo", "train": ["data/rl"]}]}, "GRPO needs validation data"),
        ({"stages": [{"name": "x", "recipe": "sft_stage9", "train": ["data/sft"]}]}, "no recipe .*sft_stage9.yaml"),
        ({"stages": [{"name": "rl", "recipe": "grpo", "train": ["data/rl"], "val": ["data/rl_val"],
                      "overrides": ["actor_rollout_ref.rollout.temprature=1"]}]},
         "stage rl: override 'actor_rollout_ref.rollout.temprature=1': actor_rollout_ref.rollout has no key "
         "'temprature'; did you mean actor_rollout_ref.rollout.temperature\\?; a new key takes a leading \\+"),
        ({"stages": [{"name": "s", "recipe": "sft_stage1", "train": ["data/sft"], "overrides": ["optimm.lr=1"]}]},
         "override 'optimm.lr=1': the top level has no key 'optimm'; did you mean optim\\?"),
        ({"stages": [{"name": "rl", "recipe": "grpo", "train": ["data/rl"], "val": ["data/rl_val"],
                      "overrides": ["actor_rollout_ref.rollout.n=[1"]}]},
         "stage rl: its recipe and overrides do not compose: .*actor_rollout_ref.rollout.n"),
        ({"stages": [{"name": "x", "train": ["data/sft"]}]}, "stage 0: 'recipe' is required"),
        ({"stages": [{"name": "x", "recipe": "cpt", "train": ["data/cpt"], "max_pixel": 5}]},
         "stage 0: unknown key 'max_pixel'; did you mean 'max_pixels'\\?"),
        ({"stages": [{"name": "x", "recipe": "cpt", "kind": "grpo", "train": ["data/cpt"]}]},
         "stage x: kind grpo, but recipe cpt is a cpt recipe"),
        ({"stages": [{"name": "x", "recipe": "cpt", "kind": "train", "train": ["data/cpt"]}]},
         "stage 0: 'kind' must be one of cpt, sft, grpo, eval, got 'train'"),
        ({"stages": [{"name": "../x", "recipe": "cpt", "train": ["data/cpt"]}]},
         "stage 0: 'name' must be letters, digits"),
        ({"stages": [{"name": "x", "recipe": "cpt", "train": "data/cpt"}]}, "stage 0: 'train' must be a list"),
        ({"stages": [{"name": "x", "recipe": "cpt", "train": ["data/cpt"], "overrides": "optim.lr=1"}]},
         "stage 0: 'overrides' must be a list"),
        ({"stages": ["cpt"]}, "stage 0: must be a mapping of keys"),
        ({"stages": {"cpt": {}}}, "'stages' must be a non-empty list"),
        ({"gpus_per_node": -3}, "'gpus_per_node' must be a positive integer, got -3"),
        ({"gpu_per_node": 2}, "unknown key 'gpu_per_node'; did you mean 'gpus_per_node'\\?"),
        ({"device": "tpu"}, "'device' must be one of cuda, cpu, got 'tpu'"),
    ],
)
def test_bad_pipelines_fail_before_anything_runs(workdir: Path, change: dict, error: str) -> None:
    with pytest.raises(PipelineError, match=error):
        run_pipeline(Pipeline.load(_config(workdir, **change)), dry_run=True)
    assert not _calls(workdir)


def test_the_readme_documents_every_key_of_the_pipeline_file() -> None:
    from medverl.pipeline.file import keys_table

    assert keys_table() in (REPO / "README.md").read_text(encoding="utf-8")


def test_several_nodes_need_the_rendezvous_environment(workdir: Path) -> None:
    pipeline = Pipeline.load(_config(workdir, launchers={}, nnodes=2))
    with pytest.raises(PipelineError, match="set NODE_RANK, MASTER_ADDR, MASTER_PORT"):
        pipeline.command(0, environ={})
    command = pipeline.command(0, environ={"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"})
    assert command[3:8] == ["--nnodes=2", "--nproc_per_node=1", "--node_rank=1", "--master_addr=10.0.0.1",
                            "--master_port=29500"]
    assert "trainer.nnodes=2" in command


PLUGIN = '''from medverl.rewards import register


@register("findings_count")
def findings_count(answer, ground_truths, **_):
    return float(answer.strip() in ground_truths)
'''


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_query_type_no_stage_reward_knows_is_named_before_anything_runs(workdir: Path, capsys, split: str) -> None:
    """Prepared with a plugin the GRPO stage does not load: verl's reward workers could not score those rows."""
    plugin = workdir / "my_rewards.py"
    plugin.write_text(PLUGIN)
    records = workdir / "custom.jsonl"
    records.write_text(json.dumps({"question": "How many nodules?", "answer": "2", "query_type": "findings_count",
                                   "data_source": "clinic_ct"}) + "\n")
    from medverl.rewards import registry

    before = registry.REGISTRY.snapshot()  # prep and pipeline are two processes for a user
    assert main(["prep", "rl", str(records), "--output", "data/custom", "--plugins", str(plugin)]) == 0
    registry.REGISTRY.restore(before)
    train, val = (["data/rl", "data/custom"], ["data/rl_val"]) if split == "train" else (["data/rl"], ["data/custom"])
    stage = {"name": "grpo", "recipe": "grpo", "train": train, "val": val}
    config = _config(workdir, stages=[stage])
    assert main(["pipeline", str(config), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert "data/custom: row 0 (data_source clinic_ct, index 0) has unknown query_type 'findings_count'" in error
    assert "reward.custom_reward_function.reward_kwargs.plugins" in error
    assert not _calls(workdir)
    # the same stage loading the plugin runs, and the pipeline process's registry is as it was
    overrides = [f"reward.custom_reward_function.reward_kwargs.plugins=[{plugin}]"]
    assert main(["pipeline", str(_config(workdir, stages=[{**stage, "overrides": overrides}])), "--dry-run"]) == 0
    assert "findings_count" not in registry.REGISTRY.names()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"  # a zombie has exited


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_pipeline_stops_its_trainer_and_what_the_trainer_started(workdir: Path, sig) -> None:
    """A trainer left running would write checkpoints into the output directory that the next run resumes from."""
    pids = workdir / "pids"
    env = {**os.environ, "HANG_STAGE": "sft1", "HANG_PIDS": str(pids)}
    pipeline = subprocess.Popen([sys.executable, "-m", "medverl", "pipeline", str(_config(workdir))], cwd=workdir,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not pids.exists() or len(pids.read_text().split()) < 2:
        assert pipeline.poll() is None and time.monotonic() < deadline, pipeline.stderr.read()
        time.sleep(0.1)
    trainer, worker = map(int, pids.read_text().split())
    pipeline.send_signal(sig)
    assert pipeline.wait(timeout=60) != 0
    deadline = time.monotonic() + 10
    while (_alive(trainer) or _alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(trainer) and not _alive(worker)
    assert [c["stage"] for c in _calls(workdir)] == ["cpt", "sft1"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("model: m\noutput: o\nstages: [\n", r"(?s)pipeline.yaml: not valid YAML: .*line 4"),  # a syntax error
        ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n"
            for a, b in zip("abcdefgh", "bcdefghi")), "aliases .* expand to more than 100000 values"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ("- model: m\n", "must be a mapping of keys"),
        ("model: m\noutput: o\nstages:\n  - name: x\n    recipe: cpt\n    train: [data/cpt]\n    max_pixel: 5\n",
         r"pipeline.yaml:7: stage 0: unknown key 'max_pixel'; did you mean 'max_pixels'\?"),
        ("model: m\noutput: o\nstages:\n  - name: x\n    recipe: cpt\n    train: {a: b}\n",
         r"pipeline.yaml:6: stage 0: 'train' must be a list"),
    ],
)
def test_a_broken_pipeline_file_is_named_with_its_line(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError, match=error):
        Pipeline.load(path)


def test_interpolations_in_overrides_are_refused_unless_allowed(workdir: Path, monkeypatch) -> None:
    monkeypatch.setenv("SECRET", "3e-6")
    stages = [{"name": "s", "recipe": "sft_stage1", "train": ["data/sft"], "overrides": ["optim.lr=${oc.env:SECRET}"]}]
    with pytest.raises(PipelineError, match="override 'optim.lr=\\${oc.env:SECRET}' interpolates"):
        run_pipeline(Pipeline.load(_config(workdir, stages=stages)), dry_run=True)
    pipeline = Pipeline.load(_config(workdir, stages=stages, interpolations=True))
    assert pipeline.stage_config(pipeline.stages[0]).optim.lr == "3e-6"


def test_paths_reach_hydra_quoted(workdir: Path, capsys) -> None:
    """A model, output or data path with spaces, commas, brackets or '=' is one value to Hydra; one it cannot take is
    named before anything runs."""
    odd = workdir / "my data, v2 [final]=x"
    odd.mkdir()
    (workdir / "data" / "sft").rename(odd / "sft")
    stages = [{"name": "s", "recipe": "sft_stage1", "train": [str(odd / "sft")]}]
    pipeline = Pipeline.load(_config(workdir, stages=stages, model=str(odd), output=str(odd / "out")))
    config = pipeline.stage_config(pipeline.stages[0])
    assert config.model.path == str(odd) and config.trainer.default_local_dir == str(odd / "out" / "s" / "checkpoints")
    assert list(config.data.train_files) == [str(odd / "sft" / "part-00000.parquet")]
    with pytest.raises(PipelineError, match="cannot be passed to Hydra"):
        Pipeline.load(_config(workdir, stages=stages, model="it's")).command(0)


def test_from_an_empty_or_unknown_stage_is_refused(workdir: Path, capsys) -> None:
    assert main(["pipeline", str(_config(workdir))]) == 0
    for name in ("", "../runs", "nope"):
        assert main(["pipeline", str(_config(workdir)), "--from", name]) == 2
        assert "no such stage" in capsys.readouterr().err
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["test"]  # nothing moved aside


def test_a_cpu_pipeline_starts_under_a_2_gib_address_space_limit(workdir: Path) -> None:
    """Checking the file, the data and every stage's composed config imports neither torch nor verl."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    done = subprocess.run([sys.executable, "-m", "medverl", "pipeline", str(_config(workdir, launchers={})), "--cpu",
                           "--dry-run"], capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line.split("]")[0] for line in done.stdout.splitlines()] == ["[cpt", "[sft1", "[grpo"]


RANK_LISTENERS = r'''
import json, os, sys
import torch.distributed as dist
from listeners import listening, process_tree
dist.init_process_group("gloo")
dist.barrier()  # every rank's sockets are up
if dist.get_rank() == 0:
    print("LISTENING", json.dumps(sorted(listening(process_tree(os.getppid())))))
dist.barrier()
dist.destroy_process_group()
'''


def test_a_one_machine_run_listens_on_the_loopback_interface_only(tmp_path: Path) -> None:
    """torchrun's rendezvous stores (every interface with plain torchrun) and gloo's pairs, as the pipeline starts
    an SFT-trainer stage on one CPU machine."""
    (tmp_path / "ranks.py").write_text(RANK_LISTENERS)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": f"{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "medverl.training.launch", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "ranks.py")], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    from listeners import exposed

    pairs = {tuple(p) for p in json.loads(done.stdout.split("LISTENING", 1)[1].splitlines()[0])}
    assert len(pairs) >= 3 and not exposed(pairs)  # the store and each rank's gloo pair, all on 127.0.0.1


def test_a_one_machine_grpo_stage_gets_a_fresh_ray_token(workdir: Path, monkeypatch) -> None:
    for variable in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):  # a Ray started in this process sets some
        monkeypatch.delenv(variable, raising=False)
    pipeline = dataclasses.replace(Pipeline.load(_config(workdir)), device="cpu")
    first, second = (pipeline.environment(pipeline.stages[2]) for _ in range(2))
    assert first["RAY_AUTH_MODE"] == "token" and len(first["RAY_AUTH_TOKEN"]) == 64
    assert first["RAY_AUTH_TOKEN"] != second["RAY_AUTH_TOKEN"]
    assert pipeline.environment(pipeline.stages[0])["GLOO_SOCKET_IFNAME"] == "lo"
    assert "RAY_AUTH_MODE" not in pipeline.environment(pipeline.stages[0])
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # the user's own cluster: its own settings
    assert "RAY_AUTH_MODE" not in pipeline.environment(pipeline.stages[2])
    several = dataclasses.replace(pipeline, nnodes=2)
    monkeypatch.delenv("RAY_ADDRESS")
    assert "RAY_AUTH_MODE" not in several.environment(several.stages[2])
