"""medverl inside verl 0.9.1's real reward path: config composition, the reward manager, Ray reward workers."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from tiny_qwen import save_tiny_tokenizer
from verl import DataProto
from verl.trainer.ppo.reward import load_reward_manager
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils import hf_tokenizer
from verl.utils.config import validate_config

from medverl.rewards import RESULT_KEYS
from medverl.rewards.registry import ENTRY_POINT_GROUP, Registry

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ["Pulmonary edema", "Lobar pneumonia", "Pleural effusion", "Pneumothorax"]
# The minimum a GRPO config needs besides the recipe to pass verl's validate_config on one GPU.
GRPO_OVERRIDES = [
    "data.train_batch_size=8",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.actor.use_kl_loss=True",
    "trainer.n_gpus_per_node=1",
    "trainer.nnodes=1",
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_tokenizer(tmp_path_factory.mktemp("tiny_qwen"))


def compose_recipe(tokenizer_dir: Path, *overrides: str):
    """verl's ppo_trainer config through recipes/grpo_rewards.yaml, as main_ppo would compose it."""
    with initialize_config_dir(config_dir=str(REPO / "recipes"), version_base=None):
        return compose(
            "grpo_rewards",
            overrides=[f"actor_rollout_ref.model.path={tokenizer_dir}", *GRPO_OVERRIDES, *overrides],
        )


def make_batch(tokenizer, samples: list[dict]) -> DataProto:
    """A verl batch as the rollout produces it: left-padded prompts, right-padded responses, non-tensor rows."""
    prompt_len, response_len = 16, 48
    prompts, responses, masks = [], [], []
    for sample in samples:
        p_ids = tokenizer("<|im_start|>user\nWhich finding?<|im_end|>")["input_ids"][-prompt_len:]
        r_ids = tokenizer(sample["response"] + "<|im_end|>")["input_ids"][:response_len]
        pad = tokenizer.pad_token_id
        prompts.append([pad] * (prompt_len - len(p_ids)) + p_ids)
        responses.append(r_ids + [pad] * (response_len - len(r_ids)))
        masks.append([0] * (prompt_len - len(p_ids)) + [1] * len(p_ids) + [1] * len(r_ids) + [0] * (response_len - len(r_ids)))
    return DataProto.from_dict(
        tensors={
            "prompts": torch.tensor(prompts),
            "responses": torch.tensor(responses),
            "attention_mask": torch.tensor(masks),
        },
        non_tensors={
            "data_source": np.array([s.get("data_source", "test") for s in samples], dtype=object),
            "reward_model": np.array([{"style": "rule", "ground_truth": s["gold"]} for s in samples], dtype=object),
            "extra_info": np.array([dict(s["extra_info"], index=i) for i, s in enumerate(samples)], dtype=object),
        },
    )


def test_recipe_composes_and_passes_verl_validation(tokenizer_dir: Path) -> None:
    cfg = compose_recipe(tokenizer_dir, "reward.custom_reward_function.reward_kwargs.format_weight=0.2")
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.reward.custom_reward_function.path == "pkg://medverl.rewards"
    assert cfg.reward.custom_reward_function.name == "compute_score"
    assert dict(cfg.reward.custom_reward_function.reward_kwargs) == {
        "format_weight": 0.2, "think_prefilled": False, "require_think": False, "plugins": [],
    }


SAMPLES = [
    # (response, gold, extra_info, expected acc)
    ("<think>air bronchograms</think><answer>B</answer>", "B", {"query_type": "multiple_choice", "options": OPTIONS}, 1.0),
    ("<think>x</think><answer>The answer is (C)</answer>", '["B", "Lobar pneumonia"]',
     {"query_type": "multiple_choice", "options": json.dumps(OPTIONS)}, 0.0),
    ("<think>x</think><answer>Lobar pneumonia</answer>", '["B"]', {"query_type": "multiple_choice", "options": json.dumps(OPTIONS)}, 1.0),
    ("<think>x</think><answer>B or C</answer>", "B", {"query_type": "multiple_choice", "options": OPTIONS}, 0.0),
    ("<think>x</think><answer>No, the nodule is benign.</answer>", "no", {"query_type": "yes_no"}, 1.0),
    ("<think>x</think><answer>Nodule</answer>", "no", {"query_type": "yes_no"}, 0.0),
    ("<think>x</think><answer>右肺</answer>", "右肺下叶", {"query_type": "jaccard"}, 0.5),
    ("<think>x</think><answer>Pleural effusion.</answer>", '["pleural effusion", "effusion"]', {"query_type": "exact_match"}, 1.0),
    ("<think>x</think>B", "B", {"query_type": "multiple_choice", "options": OPTIONS}, 0.0),  # malformed
]


def test_think_tags_survive_verls_decode(tokenizer_dir: Path) -> None:
    """Like Qwen3's, the tiny tokenizer's <think> tokens are not special: verl's decode keeps them."""
    tokenizer = hf_tokenizer(str(tokenizer_dir))
    ids = tokenizer("<think>x</think><answer>B</answer><|im_end|>")["input_ids"]
    assert tokenizer.convert_tokens_to_ids("</think>") in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>x</think><answer>B</answer>"


def test_think_prefilled_through_the_reward_manager(tokenizer_dir: Path) -> None:
    """Qwen3 thinking templates end the prompt with '<think>\\n': the response starts inside the reasoning."""
    cfg = compose_recipe(tokenizer_dir, "reward.custom_reward_function.reward_kwargs.think_prefilled=true")
    tokenizer = hf_tokenizer(str(tokenizer_dir))
    manager = load_reward_manager(cfg, tokenizer)
    extra = {"query_type": "yes_no"}
    closed = make_batch(tokenizer, [{"response": "effusion seen</think><answer>yes</answer>", "gold": "yes", "extra_info": extra}])
    never_closed = make_batch(tokenizer, [{"response": "effusion seen <answer>yes</answer>", "gold": "yes", "extra_info": extra}])
    assert manager.loop.run_until_complete(manager.run_single(closed))["reward_score"] == 1.0
    assert manager.loop.run_until_complete(manager.run_single(never_closed))["reward_score"] == 0.0


@pytest.mark.parametrize(("response", "gold", "extra_info", "acc"), SAMPLES)
def test_naive_reward_manager_run_single(tokenizer_dir: Path, response, gold, extra_info, acc) -> None:
    cfg = compose_recipe(tokenizer_dir, "reward.custom_reward_function.reward_kwargs.format_weight=0.2")
    tokenizer = hf_tokenizer(str(tokenizer_dir))
    manager = load_reward_manager(cfg, tokenizer)
    data = make_batch(tokenizer, [{"response": response, "gold": gold, "extra_info": extra_info}])
    out = manager.loop.run_until_complete(manager.run_single(data))
    info = out["reward_extra_info"]
    assert tuple(info) == RESULT_KEYS  # the same keys for every sample, or verl's batching raises KeyError
    assert info["acc"] == pytest.approx(acc)
    assert out["reward_score"] == pytest.approx(0.2 * info["format"] + 0.8 * info["acc"])
    assert (info["format"] == 1.0) is ("<answer>" in response)


def test_reward_kwargs_typo_fails_the_first_sample(tokenizer_dir: Path) -> None:
    cfg = compose_recipe(tokenizer_dir, "+reward.custom_reward_function.reward_kwargs.format_weigth=0.2")
    tokenizer = hf_tokenizer(str(tokenizer_dir))
    manager = load_reward_manager(cfg, tokenizer)
    data = make_batch(tokenizer, [{"response": "<answer>B</answer>", "gold": "B", "extra_info": {"query_type": "yes_no"}}])
    with pytest.raises(TypeError, match="Did you mean 'format_weight'"):
        manager.loop.run_until_complete(manager.run_single(data))


PLUGIN = '''
from medverl.rewards import Verdict, register


@register("laterality")
def laterality(answer, golds):
    """Left or right, nothing else."""
    side = {"left": "left", "right": "right", "l": "left", "r": "right"}.get(answer.strip().lower())
    return Verdict(float(side == golds[0]), pred=side or "", reason="" if side == golds[0] else "wrong side")
'''


@pytest.mark.ray
def test_plugin_reward_reaches_fresh_ray_reward_workers(tokenizer_dir: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager

    plugin = tmp_path / "lab_rewards.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    cfg = compose_recipe(
        tokenizer_dir,
        f"reward.custom_reward_function.reward_kwargs.plugins=[{plugin}]",
        "reward.num_workers=2",
    )
    samples = [
        {"response": "<think>x</think><answer>L</answer>", "gold": "left", "extra_info": {"query_type": "laterality"}},
        {"response": "<think>x</think><answer>right</answer>", "gold": "left", "extra_info": {"query_type": "laterality"}},
        {"response": "<think>x</think><answer>B</answer>", "gold": "B", "extra_info": {"query_type": "multiple_choice"}},
        {"response": "<answer>yes</answer>", "gold": "yes", "extra_info": {"query_type": "yes_no"}},
        {"response": "no tags", "gold": "left", "extra_info": {"query_type": "laterality"}},
    ]
    tokenizer = hf_tokenizer(str(tokenizer_dir))
    batch = make_batch(tokenizer, samples)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        manager = RewardLoopManager(cfg)
        out = manager.compute_rm_score(batch)
        assert out.meta_info["reward_extra_keys"] == list(RESULT_KEYS)
        assert list(out.non_tensor_batch["acc"]) == [1.0, 0.0, 1.0, 1.0, 0.0]
        assert list(out.non_tensor_batch["pred"]) == ["left", "right", "B", "yes", ""]
        assert out.non_tensor_batch["reason"][1] == "wrong side"
        # verl puts the score on the last valid response token
        valid = batch.batch["attention_mask"][:, 16:].sum(-1)
        scores = out.batch["rm_scores"]
        expected = [1.0, 0.1, 1.0, 1.0, 0.0]
        for row, (length, score) in enumerate(zip(valid.tolist(), expected, strict=True)):
            assert scores[row, length - 1].item() == pytest.approx(score)
            assert scores[row].sum().item() == pytest.approx(score)

        bad = make_batch(tokenizer, [{"response": "<answer>x</answer>", "gold": "x", "extra_info": {"query_type": "lateral"}}])
        with pytest.raises(Exception, match="Did you mean 'laterality'"):
            manager.compute_rm_score(bad)
    finally:
        ray.shutdown()


def test_entry_point_rewards_are_discovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package's entry point (group medverl.rewards) registers its reward, in this and new processes."""
    (tmp_path / "lab_pkg_rewards.py").write_text(
        textwrap.dedent(
            '''
            def organ(answer, golds):
                """Exact organ name."""
                return float(answer.strip().lower() == golds[0].lower())
            '''
        )
    )
    dist = tmp_path / "lab_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\norgan = lab_pkg_rewards:organ\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    fresh = Registry()
    assert "organ" in fresh.names()
    assert fresh.get("organ").fn("Liver", ("liver",)) == 1.0

    script = (
        "from medverl.rewards import compute_score; "
        "print(compute_score(solution_str='<answer>Liver</answer>', ground_truth='liver', "
        "extra_info={'query_type': 'organ'})['score'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path)}, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1.0"
