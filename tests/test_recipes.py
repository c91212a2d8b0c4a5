"""Every stage of every bundled pipeline composes with the pinned verl's configs and passes verl's own checks.

The commands the pipeline would run are composed exactly (their Hydra overrides), with the model swapped for a tiny
offline Qwen-VL and the data for the bundled examples prepared by recipes/prepare_example_data.sh.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from medverl.pipeline import Pipeline
from medverl.pipeline.file import Source

REPO = Path(__file__).resolve().parent.parent
PIPELINES = sorted((REPO / "recipes" / "pipelines").glob("*.yaml"))
SFT_SECTIONS = ("model", "engine", "optim", "checkpoint", "profiler")  # what verl's SFTTrainer._build_config checks


@pytest.fixture(scope="module")
def example_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled example records, prepared by the bundled script (run from a copy of the repository root)."""
    root = tmp_path_factory.mktemp("repo")
    (root / "examples").symlink_to(REPO / "examples")
    medverl = f"{sys.executable} -m medverl"
    for _ in range(2):  # a second run makes the same directories anew
        subprocess.run(["bash", str(REPO / "recipes" / "prepare_example_data.sh")], cwd=root, check=True,
                       env={**os.environ, "MEDVERL": medverl}, capture_output=True)
    return root / "runs" / "example" / "data"


@pytest.fixture(scope="module")
def model_dir(family_processor: tuple[str, Path]) -> str:
    return str(family_processor[1])


def _local(pipeline: Pipeline, data: Path, model: str, output: Path) -> Pipeline:
    """The pipeline on the example data and a tiny model (same stages, recipes and overrides), every stage's saved
    model standing in as the tiny one."""
    dirs = {"cpt": ["cpt_captions", "cpt_interleaved"], "sft": ["sft_stage1"], "rl": ["rl"]}
    stages = tuple(
        dataclasses.replace(
            s, train=tuple(str(data / d) for d in dirs[pipeline.kind(s).data_kind]),
            val=(str(data / "rl_val"),) if s.val else (),
            # a mixing stage mixes the same directories, with equal weights
            mixture=s.mixture and dataclasses.replace(s.mixture, sources=tuple(
                Source(str(data / d), d, 1.0) for d in dirs[pipeline.kind(s).data_kind])),
        )
        for s in pipeline.training_stages  # an eval stage trains nothing
    )
    local = dataclasses.replace(pipeline, model=model, stages=stages, output=output)
    for stage in stages:
        local.stage_model(stage).parent.mkdir(parents=True, exist_ok=True)
        local.stage_model(stage).symlink_to(model)
    return local


def _compose(pipeline: Pipeline, index: int) -> DictConfig:
    command = pipeline.command(index, environ={})
    at = command.index("--config-name")
    with initialize_config_dir(config_dir=command[command.index("--config-path") + 1], version_base=None):
        return compose(command[at + 1], overrides=command[at + 2 :])


def _check_sft(cfg: DictConfig, pipeline: Pipeline, model: str) -> None:
    from verl.trainer.sft_trainer import create_sft_dataset
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.config import omega_conf_to_dataclass

    for section in SFT_SECTIONS:
        omega_conf_to_dataclass(cfg[section])
    assert cfg.data.pad_mode == "no_padding" and cfg.data.use_dynamic_bsz
    # sequence packing on GPUs; on CPU the flash-attn varlen kernels are not there (medverl.cpu)
    assert cfg.model.use_remove_padding == (pipeline.device == "cuda")
    assert cfg.engine.strategy == ("fsdp" if pipeline.device == "cuda" else "fsdp2")
    assert "hf_model" in cfg.checkpoint.save_contents  # the next stage loads it
    assert cfg.data.train_batch_size % (pipeline.nnodes * pipeline.gpus_per_node) == 0
    dataset = create_sft_dataset(cfg.data.train_files, cfg.data, hf_tokenizer(model), hf_processor(model))
    assert len(dataset) > 0 and dataset[0]["loss_mask"].sum() > 0


def _check_grpo(cfg: DictConfig, pipeline: Pipeline) -> None:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    rollout = {"cuda": "vllm", "cpu": "hf"}[pipeline.device]
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.actor_rollout_ref.rollout.name == rollout
    assert cfg.reward.custom_reward_function.path == "pkg://medverl.rewards"
    assert cfg.data.image_patch_size == pipeline.family.patch_size
    assert "hf_model" in cfg.actor_rollout_ref.actor.checkpoint.save_contents
    rollout = cfg.actor_rollout_ref.rollout
    assert rollout.max_model_len >= cfg.data.max_prompt_length + cfg.data.max_response_length
    assert not rollout.enable_chunked_prefill  # vision-language models


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_every_stage_composes_and_passes_verls_checks(
    path: Path, example_data: Path, model_dir: str, tmp_path: Path
) -> None:
    pipeline = _local(Pipeline.load(path), example_data, model_dir, tmp_path)
    assert pipeline.kind(pipeline.stages[-1]).name == "grpo"
    for index, stage in enumerate(pipeline.stages):
        cfg = _compose(pipeline, index)
        assert cfg.trainer.n_gpus_per_node == pipeline.gpus_per_node and cfg.trainer.experiment_name == stage.name
        if pipeline.kind(stage).name == "grpo":
            _check_grpo(cfg, pipeline)
        else:
            _check_sft(cfg, pipeline, model_dir)


def test_model_variants_set_their_patch_size_and_a_low_to_high_schedule() -> None:
    for path in PIPELINES:
        pipeline = Pipeline.load(path)
        assert pipeline.family.patch_size == (16 if "Qwen3-VL" in pipeline.model else 14), path.name
        sft_pixels = [s.max_pixels for s in pipeline.stages if pipeline.kind(s).trainer == "sft"]
        assert sft_pixels == sorted(sft_pixels) and len(set(sft_pixels)) > 1, path.name
    names = {p.stem for p in PIPELINES}
    assert {f"{m}_{v}" for m in ("qwen3_vl_4b", "qwen25_vl_3b") for v in ("1gpu_debug", "8gpu")} <= names


def test_cpt_recipe_trains_with_the_cpt_dataset(example_data: Path, model_dir: str, tmp_path: Path) -> None:
    from medverl.training.cpt_dataset import CPTDataset
    from verl.trainer.sft_trainer import create_sft_dataset
    from verl.utils import hf_processor, hf_tokenizer

    pipeline = _local(Pipeline.load(REPO / "recipes" / "pipelines" / "example.yaml"), example_data, model_dir, tmp_path)
    cfg = _compose(pipeline, 0)
    dataset = create_sft_dataset(cfg.data.train_files, cfg.data, hf_tokenizer(model_dir), hf_processor(model_dir))
    assert isinstance(dataset, CPTDataset) and len(dataset) == 5 and dataset.truncation == "right"


# Keys verl reads but its YAML does not declare: RolloutConfig.limit_images is a dataclass field, reward_kwargs
# is read with .get() and passed to compute_score.
UNDECLARED_IN_VERL_YAML = ("actor_rollout_ref.rollout.limit_images", "reward.custom_reward_function.reward_kwargs.")


def _leaves(node: object, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [prefix[:-1]]


@pytest.mark.parametrize("recipe", ["cpt", "sft_stage1", "sft_stage2", "sft_stage3", "grpo", "grpo_rewards"])
def test_every_key_a_recipe_sets_exists_in_verls_config(recipe: str) -> None:
    """Hydra accepts unknown keys in a primary config silently: a key renamed upstream must fail here instead."""
    import yaml
    from omegaconf import OmegaConf

    recipes = REPO / "recipes"
    base = "ppo_trainer" if recipe.startswith("grpo") else "sft_trainer_engine"
    with initialize_config_dir(config_dir=str(Path(__import__("verl").__file__).parent / "trainer" / "config"),
                               version_base=None):
        verl_config = OmegaConf.to_container(compose(base), resolve=False)
    keys = []
    for name in (recipe, "common/sft" if base == "sft_trainer_engine" else "common/rewards"):
        raw = yaml.safe_load((recipes / f"{name}.yaml").read_text())
        keys += [k for k in _leaves({k: v for k, v in raw.items() if k not in ("hydra", "defaults")})]
    for path in PIPELINES:
        pipeline = Pipeline.load(path)
        keys += [o.split("=", 1)[0] for s in pipeline.training_stages if s.recipe == recipe for o in s.overrides]
    missing = []
    for key in {k for k in keys if not k.startswith(UNDECLARED_IN_VERL_YAML)}:
        node = verl_config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    assert not missing, f"{recipe}: keys verl {base} does not have: {sorted(missing)}"
