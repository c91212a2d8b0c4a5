"""medverl inside verl 0.9.1's real reward path: config composition, the reward manager, Ray reward workers."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import DictConfig
from verl import DataProto
from verl.trainer.ppo.reward import load_reward_manager
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils import hf_tokenizer
from verl.utils.config import validate_config

from medverl.rewards import RESULT_KEYS, compute_score
from medverl.rewards.registry import ENTRY_POINT_GROUP, Registry

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ["Pulmonary edema", "Lobar pneumonia", "Pleural effusion", "Pneumothorax"]
PROMPT_LEN, RESPONSE_LEN = 16, 48
# verl warns on every GRPO config that it disabled the critic; expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Disabled critic as algorithm.adv_estimator:UserWarning")

# What verl's validate_config needs beyond the recipe on a CPU machine: it never touches a device, only these
# two micro-batch sizes have no default (or actor.use_dynamic_bsz=True, which skips both checks).
CPU_MIN_OVERRIDES = (
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
)
# A GRPO run with a KL loss also needs a reference policy, hence the ref micro-batch size.
GRPO_KL_OVERRIDES = (
    *CPU_MIN_OVERRIDES,
    "data.train_batch_size=8",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
    "trainer.n_gpus_per_node=1",
)


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_processor: Path) -> Path:
    return tiny_processor


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path):
    return hf_tokenizer(str(tokenizer_dir))


def compose_recipe(tokenizer_dir: Path, *overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """verl's ppo_trainer config through recipes/grpo_rewards.yaml, as main_ppo would compose it."""
    with initialize_config_dir(config_dir=str(REPO / "recipes"), version_base=None):
        return compose(
            "grpo_rewards",
            overrides=[f"actor_rollout_ref.model.path={tokenizer_dir}", *overrides],
            return_hydra_config=return_hydra_config,
        )


def validate(cfg: DictConfig) -> None:
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


def make_batch(tokenizer, samples: list[dict]) -> DataProto:
    """A verl batch as the rollout produces it: left-padded prompts, right-padded responses, non-tensor rows."""
    prompts, responses, masks = [], [], []
    pad = tokenizer.pad_token_id
    for sample in samples:
        p_ids = tokenizer("<|im_start|>user\nWhich finding?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
        p_ids = p_ids[-PROMPT_LEN:]
        r_ids = tokenizer(sample["response"] + "<|im_end|>")["input_ids"][:RESPONSE_LEN]
        prompts.append([pad] * (PROMPT_LEN - len(p_ids)) + p_ids)
        responses.append(r_ids + [pad] * (RESPONSE_LEN - len(r_ids)))
        masks.append(
            [0] * (PROMPT_LEN - len(p_ids)) + [1] * len(p_ids) + [1] * len(r_ids) + [0] * (RESPONSE_LEN - len(r_ids))
        )
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


# ---------------------------------------------------------------------------------------------------------------
# a. The recipe composes through Hydra's compose API and passes verl's validate_config


def test_recipe_composes_and_passes_verl_validation(tokenizer_dir: Path) -> None:
    cfg = compose_recipe(
        tokenizer_dir, *CPU_MIN_OVERRIDES, "reward.custom_reward_function.reward_kwargs.format_weight=0.2"
    )
    validate(cfg)
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.actor_rollout_ref.model.path == str(tokenizer_dir)
    assert cfg.reward.custom_reward_function.path == "pkg://medverl.rewards"
    assert cfg.reward.custom_reward_function.name == "compute_score"
    assert dict(cfg.reward.custom_reward_function.reward_kwargs) == {
        "format_weight": 0.2, "think_prefilled": False, "require_think": False, "plugins": [],
    }
    assert cfg.reward.reward_manager.name == "naive"  # the manager that calls compute_score once per sample


def test_recipe_searchpath_is_honoured_by_the_compose_api(tokenizer_dir: Path, tmp_path: Path) -> None:
    """ppo_trainer comes from pkg://verl.trainer.config through the recipe's own hydra.searchpath."""
    cfg = compose_recipe(tokenizer_dir, return_hydra_config=True)
    assert list(cfg.hydra.searchpath) == ["pkg://verl.trainer.config"]
    sources = [(s.provider, s.schema, s.path) for s in cfg.hydra.runtime.config_sources]
    assert ("hydra.searchpath in main", "pkg", "verl.trainer.config") in sources
    # Control: the same defaults list without the searchpath cannot find ppo_trainer.
    (tmp_path / "no_searchpath.yaml").write_text("defaults:\n  - ppo_trainer\n  - _self_\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        with pytest.raises(MissingConfigException, match="ppo_trainer"):
            compose("no_searchpath")


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        # each of the two minimal overrides is needed
        (CPU_MIN_OVERRIDES[1:], "ppo_micro_batch_size"),
        (CPU_MIN_OVERRIDES[:1], "rollout.log_prob_micro_batch_size"),
        # a KL loss brings in the reference policy and its micro-batch size
        (tuple(o for o in GRPO_KL_OVERRIDES if not o.startswith("actor_rollout_ref.ref.")), "ref.log_prob_micro"),
    ],
)
def test_verl_validation_rejects_less_than_the_minimum(tokenizer_dir: Path, overrides, error) -> None:
    cfg = compose_recipe(tokenizer_dir, *overrides)
    with pytest.raises(Exception, match=error):
        validate(cfg)


def test_grpo_with_kl_loss_passes_verl_validation(tokenizer_dir: Path) -> None:
    cfg = compose_recipe(tokenizer_dir, *GRPO_KL_OVERRIDES)
    validate(cfg)
    assert need_reference_policy(cfg) and not need_critic(cfg)


# ---------------------------------------------------------------------------------------------------------------
# b. verl's NaiveRewardManager (load_reward_manager + run_single) on one sample at a time


@pytest.fixture(scope="module")
def weighted_cfg(tokenizer_dir: Path) -> DictConfig:
    return compose_recipe(tokenizer_dir, "reward.custom_reward_function.reward_kwargs.format_weight=0.2")


MC = {"query_type": "multiple_choice", "options": OPTIONS}
MC_JSON = {"query_type": "multiple_choice", "options": json.dumps(OPTIONS)}
SAMPLES = [
    # (response, gold, extra_info, expected acc)
    # multiple_choice, options as a list
    ("<think>air bronchograms</think><answer>B</answer>", "B", MC, 1.0),
    # options as a JSON string, gold a JSON list of letter and text; the answer names another option
    ("<think>x</think><answer>The answer is (C)</answer>", '["B", "Lobar pneumonia"]', MC_JSON, 0.0),
    # the option's text instead of its letter
    ("<think>x</think><answer>Lobar pneumonia</answer>", '["B"]', MC_JSON, 1.0),
    # hedging between two letters
    ("<think>x</think><answer>B or C</answer>", "B", MC, 0.0),
    ("<think>x</think><answer>No, the nodule is benign.</answer>", "no", {"query_type": "yes_no"}, 1.0),
    ("<think>x</think><answer>Nodule</answer>", "no", {"query_type": "yes_no"}, 0.0),
    # CJK: character tokens, 2 of 4 shared
    ("<think>右肺下叶可见斑片影</think><answer>右肺</answer>", "右肺下叶", {"query_type": "jaccard"}, 0.5),
    ("<think>x</think><answer>Pleural effusion.</answer>", '["pleural effusion", "effusion"]',
     {"query_type": "exact_match"}, 1.0),
    # malformed: no <answer> tags
    ("<think>x</think>B", "B", MC, 0.0),
    # malformed: the answer never closes (a response cut at max length)
    ("<think>x</think><answer>B", "B", MC, 0.0),
]


@pytest.mark.parametrize(("response", "gold", "extra_info", "acc"), SAMPLES)
def test_naive_reward_manager_run_single(
    weighted_cfg: DictConfig, tokenizer, response: str, gold: str, extra_info: dict, acc: float
) -> None:
    manager = load_reward_manager(weighted_cfg, tokenizer)
    data = make_batch(tokenizer, [{"response": response, "gold": gold, "extra_info": extra_info}])
    out = manager.loop.run_until_complete(manager.run_single(data))
    info = out["reward_extra_info"]
    assert tuple(info) == RESULT_KEYS  # the same keys for every sample, or verl's batching raises KeyError
    assert info["acc"] == pytest.approx(acc)
    assert info["format"] == float(response.endswith("</answer>"))
    assert out["reward_score"] == pytest.approx(0.2 * info["format"] + 0.8 * info["acc"])
    # verl decoded the response ids (skip_special_tokens drops <|im_end|>) back to the text the model wrote,
    # and scoring that text directly gives the same result
    response_ids = data.batch["responses"][0][: data.batch["attention_mask"][0, PROMPT_LEN:].sum()]
    assert tokenizer.decode(response_ids, skip_special_tokens=True) == response
    direct = compute_score(
        data_source="test", solution_str=response, ground_truth=gold, extra_info=extra_info, format_weight=0.2
    )
    assert info == direct
    # verl adds its own keys to the row's extra_info in place; medverl must ignore them
    assert {"num_turns", "rollout_reward_scores"} <= set(data.non_tensor_batch["extra_info"][0])


def test_length_shaping_overlong_penalises_long_responses_and_keeps_medverls_extras(
    tokenizer_dir: Path, tokenizer
) -> None:
    """length_shaping=overlong: verl's dapo manager, max_resp_len from data.max_response_length, 8 tokens of buffer."""
    cfg = compose_recipe(tokenizer_dir, "length_shaping=overlong", f"data.max_response_length={RESPONSE_LEN}",
                         "reward.reward_kwargs.overlong_buffer_cfg.len=8", *GRPO_KL_OVERRIDES)
    validate(cfg)
    assert cfg.reward.reward_manager.name == "dapo" and cfg.reward.reward_kwargs.max_resp_len == RESPONSE_LEN
    manager = load_reward_manager(cfg, tokenizer)
    rows = []
    for reasoning in ("x", "x " * 60):  # a short response, and one cut at RESPONSE_LEN tokens
        data = make_batch(tokenizer, [{"response": f"<think>{reasoning}</think><answer>B</answer>", "gold": "B",
                                       "extra_info": MC}])
        length = int(data.batch["attention_mask"][0, PROMPT_LEN:].sum())
        rows.append((length, manager.loop.run_until_complete(manager.run_single(data))))
    (short, kept), (long, cut) = rows
    assert short < RESPONSE_LEN - 8 and long == RESPONSE_LEN
    assert kept["reward_score"] == pytest.approx(1.0) and float(kept["reward_extra_info"]["overlong_reward"]) == 0
    # the cut response never closed its answer (format 0); it loses penalty_factor * 8/8 more at max length
    assert cut["reward_extra_info"]["format"] == 0.0
    assert float(cut["reward_score"]) == pytest.approx(-1.0)
    assert float(cut["reward_extra_info"]["overlong_reward"]) == pytest.approx(-1.0)
    for _, out in rows:  # medverl's keys, then the manager's own two, the same for every sample
        assert list(out["reward_extra_info"]) == [*RESULT_KEYS, "overlong_reward", "overlong"]


def test_think_tags_survive_verls_decode(tokenizer) -> None:
    """Like Qwen3's, the tiny tokenizer's <think> tokens are not special: verl's decode keeps them."""
    ids = tokenizer("<think>x</think><answer>B</answer><|im_end|>")["input_ids"]
    assert tokenizer.convert_tokens_to_ids("</think>") in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>x</think><answer>B</answer>"


def test_think_prefilled_through_the_reward_manager(tokenizer_dir: Path, tokenizer) -> None:
    """Qwen3 thinking templates end the prompt with '<think>\\n': the response starts inside the reasoning."""
    cfg = compose_recipe(tokenizer_dir, "reward.custom_reward_function.reward_kwargs.think_prefilled=true")
    manager = load_reward_manager(cfg, tokenizer)
    extra = {"query_type": "yes_no"}
    closed = make_batch(
        tokenizer, [{"response": "effusion seen</think><answer>yes</answer>", "gold": "yes", "extra_info": extra}]
    )
    never_closed = make_batch(
        tokenizer, [{"response": "effusion seen <answer>yes</answer>", "gold": "yes", "extra_info": extra}]
    )
    assert manager.loop.run_until_complete(manager.run_single(closed))["reward_score"] == 1.0
    assert manager.loop.run_until_complete(manager.run_single(never_closed))["reward_score"] == 0.0


def test_reward_kwargs_typo_fails_the_first_sample(tokenizer_dir: Path, tokenizer) -> None:
    cfg = compose_recipe(tokenizer_dir, "+reward.custom_reward_function.reward_kwargs.format_weigth=0.2")
    manager = load_reward_manager(cfg, tokenizer)
    data = make_batch(
        tokenizer, [{"response": "<answer>B</answer>", "gold": "B", "extra_info": {"query_type": "yes_no"}}]
    )
    with pytest.raises(TypeError, match="Did you mean 'format_weight'"):
        manager.loop.run_until_complete(manager.run_single(data))


# ---------------------------------------------------------------------------------------------------------------
# c. A plugin file's reward in freshly started Ray reward workers (verl's RewardLoopManager)

PLUGIN = '''
import os
from pathlib import Path

import medverl
from medverl.rewards import Verdict, register

# Test probe: which process imported this file, and which medverl it saw.
Path({marker_dir!r}, f"loaded-{{os.getpid()}}").write_text(medverl.__file__)


@register("laterality")
def laterality(answer, golds):
    """Left or right, nothing else."""
    side = {{"left": "left", "right": "right", "l": "left", "r": "right"}}.get(answer.strip().lower())
    return Verdict(float(side == golds[0]), pred=side or "", reason="" if side == golds[0] else "wrong side")
'''


@pytest.mark.ray
def test_plugin_reward_reaches_fresh_ray_reward_workers(tokenizer_dir: Path, tokenizer, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager

    import medverl
    from medverl.rewards import registry

    markers = tmp_path / "markers"
    markers.mkdir()
    plugin = tmp_path / "lab_rewards.py"
    plugin.write_text(PLUGIN.format(marker_dir=str(markers)))
    cfg = compose_recipe(
        tokenizer_dir,
        f"reward.custom_reward_function.reward_kwargs.plugins=['{plugin}']",
        "reward.num_workers=2",
    )
    lat = {"query_type": "laterality"}
    samples = [
        {"response": "<think>x</think><answer>L</answer>", "gold": "left", "extra_info": lat},
        {"response": "<think>x</think><answer>right</answer>", "gold": "left", "extra_info": lat},
        {"response": "<think>x</think><answer>B</answer>", "gold": "B", "extra_info": MC_JSON},
        {"response": "<answer>yes</answer>", "gold": "yes", "extra_info": {"query_type": "yes_no"}},
        {"response": "no tags", "gold": "left", "extra_info": lat},
    ]
    batch = make_batch(tokenizer, samples)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        manager = RewardLoopManager(cfg)
        out = manager.compute_rm_score(batch)
        assert out.meta_info["reward_extra_keys"] == list(RESULT_KEYS)
        assert sorted(out.non_tensor_batch) == sorted(RESULT_KEYS)
        assert list(out.non_tensor_batch["acc"]) == [1.0, 0.0, 1.0, 1.0, 0.0]
        assert list(out.non_tensor_batch["format"]) == [1.0, 1.0, 1.0, 1.0, 0.0]
        assert list(out.non_tensor_batch["pred"]) == ["left", "right", "B", "yes", ""]
        assert out.non_tensor_batch["reason"][1] == "wrong side"
        # verl puts each score on the last valid response token and zeros elsewhere
        valid = batch.batch["attention_mask"][:, PROMPT_LEN:].sum(-1)
        scores = out.batch["rm_scores"]
        assert scores.shape == batch.batch["responses"].shape
        expected = [1.0, 0.1, 1.0, 1.0, 0.0]
        for row, (length, score) in enumerate(zip(valid.tolist(), expected, strict=True)):
            assert scores[row, length - 1].item() == pytest.approx(score)
            assert torch.count_nonzero(scores[row]).item() == (score != 0.0)

        # Only the two worker processes imported the plugin, each with this checkout's medverl; the test process
        # never loaded it, so the reward really came from the plugin file through reward_kwargs.
        loaded = {int(p.name.removeprefix("loaded-")): p.read_text() for p in markers.iterdir()}
        assert len(loaded) == 2 and os.getpid() not in loaded
        assert set(loaded.values()) == {medverl.__file__}
        assert "laterality" not in registry.REGISTRY.names()

        bad = make_batch(
            tokenizer, [{"response": "<answer>x</answer>", "gold": "x", "extra_info": {"query_type": "lateral"}}]
        )
        with pytest.raises(Exception, match=r"unknown query_type 'lateral'\. Did you mean 'laterality'\?") as error:
            manager.compute_rm_score(bad)
        known = str(error.value).partition("Known query types: ")[2].partition(".")[0].split(", ")
        assert {"exact_match", "jaccard", "laterality", "multiple_choice", "yes_no"} <= set(known)
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# d. Rewards of installed packages, found through the medverl.rewards entry-point group


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

    fresh = Registry()
    assert "organ" not in fresh.names()  # control: not on sys.path yet
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = Registry()
    assert "organ" in fresh.names()
    spec = fresh.get("organ")
    assert spec.doc == "Exact organ name."
    assert spec.fn("Liver", ("liver",)) == 1.0

    script = (
        "import json; from medverl.rewards import compute_score; "
        "print(json.dumps(compute_score(solution_str='<answer>Liver</answer>', ground_truth='liver', "
        "extra_info={'query_type': 'organ'})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"score": 1.0, "acc": 1.0, "format": 1.0, "pred": "Liver", "reason": ""}
