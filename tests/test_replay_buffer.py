"""medverl's replay buffer: verl's sync one, except that a failed prompt group stops the run."""

import pytest
from omegaconf import OmegaConf

from medverl.training.replay_buffer import RolloutFailed, StrictReplayBuffer


def _buffer(mode: str = "sync", **sampler_kwargs) -> StrictReplayBuffer:
    return StrictReplayBuffer(mode, OmegaConf.create({}), 8, "drop", OmegaConf.create(sampler_kwargs),
                              refill_fn=lambda n: None)


def test_a_failed_group_raises_naming_its_partition_and_uids(monkeypatch: pytest.MonkeyPatch) -> None:
    groups = {"train": {"u1": {"is_prompt": True, "status": "finished", "global_steps": 1},
                        "u2": {"is_prompt": True, "status": "failure", "global_steps": 1},
                        "u1_0_0": {"status": "success"}},
              "val": {"v1": {"is_prompt": True, "status": "running", "global_steps": 0}}}
    monkeypatch.setattr("transfer_queue.kv_list", lambda: groups)
    buffer = _buffer()
    with pytest.raises(RolloutFailed, match=r"1 prompt group\(s\) raised: 1 in training \(uid u2\).*plugins"):
        buffer._sync_metadata_from_transfer_queue()
    groups["train"]["u2"]["status"] = "finished"
    buffer._sync_metadata_from_transfer_queue()  # nothing failed: verl's bookkeeping as before
    assert buffer.finished_keys["train"] == {"u1", "u2"} and buffer.running_keys["val"] == {"v1"}


def test_it_polls_faster_than_verls_default_and_checks_its_options() -> None:
    assert _buffer().poll_interval == 0.2
    assert _buffer(poll_interval=1).poll_interval == 1.0
    for bad in (0, -1, "fast", True, 600):
        with pytest.raises(ValueError, match="poll_interval must be seconds"):
            _buffer(poll_interval=bad)
    with pytest.raises(ValueError, match="unknown trainer.v1.sampler.sampler_kwargs .*: pol_interval"):
        _buffer(pol_interval=1)
    with pytest.raises(ValueError, match="sync replay buffer; trainer.v1.trainer_mode is 'colocate_async'"):
        _buffer("colocate_async")


def test_the_grpo_recipe_plugs_it_in_as_verls_custom_sampler() -> None:
    from verl.utils.import_utils import load_extern_object

    from medverl.pipeline import DEFAULT_RECIPES

    sampler = OmegaConf.load(DEFAULT_RECIPES / "grpo.yaml").trainer.v1.sampler.custom_sampler
    assert load_extern_object(sampler.path, sampler.name) is StrictReplayBuffer
