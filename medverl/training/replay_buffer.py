"""verl's synchronous replay buffer, except that a failed rollout or reward stops the run.

verl 0.9.1's v1 trainer (``main_ppo``) runs each prompt's ``rollout.n`` sessions in an agent loop worker that
catches their exceptions: a session whose generation or reward raised (an unknown ``query_type``, a reference no
answer can match) marks its prompt group ``failure``, its traceback is logged, and the group is trained on without
the failed sessions. medverl's recipes plug this class in as verl's custom sampler::

    trainer.v1.sampler.custom_sampler.path=pkg://medverl.training.replay_buffer
    trainer.v1.sampler.custom_sampler.name=StrictReplayBuffer

and the first failed group ends ``main_ppo`` with :class:`RolloutFailed` (exit status 1), training or validation.

``trainer.v1.sampler.sampler_kwargs.poll_interval`` sets how often the buffer looks for finished groups (verl's
default is 2 s, which rounds every step's generation time up to a multiple of it; ours is 0.2 s).

verl hands custom samplers no DAPO group filtering or failed-group refill: with ``algorithm.filter_groups.enable``
or ``trainer.v1.sampler.sync_refill_failed_groups`` set, unset the custom sampler (and lose the check).

It overrides a private method of verl's buffer: :data:`PINS` holds the sha256 of the verl source it relies on, checked
when the buffer is built (:func:`medverl.verl_pins.check`).
"""

from __future__ import annotations

import logging

from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

from medverl import verl_pins
from medverl.verl_pins import Pin

logger = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 0.2
# how many failed prompt groups the error names
NAMED = 5
# "module:qualified.name" -> its source's sha256 in verl 0.9.1, and what the buffer does with it
PINS = {
    "verl.trainer.ppo.v1.replay_buffer:ReplayBuffer._sync_metadata_from_transfer_queue": Pin(
        "489dc320fdce58c7a104f38f29b2ea9dd00c7b6d74f5eeb1a4e529f479999e22",
        "overrides this private method and reads the failure_keys it fills"),
    "verl.trainer.ppo.v1.replay_buffer:ReplayBuffer.sample": Pin(
        "cdcecebeb7f0b44e9726b62e208fb6821023591d8b91b0a9ad56750a96363e43",
        "relies on it calling _sync_metadata_from_transfer_queue at every poll"),
}


class RolloutFailed(RuntimeError):
    """A prompt group's generation or reward raised in verl's agent loop."""


class StrictReplayBuffer(ReplayBuffer):
    """verl's sync ``ReplayBuffer`` that raises :class:`RolloutFailed` on the first failed prompt group."""

    def __init__(self, trainer_mode: str, trainer_config, max_off_policy_threshold: int | None,
                 max_off_policy_strategy: str, sampler_kwargs, **kwargs) -> None:
        verl_pins.check(PINS)
        if trainer_mode != "sync":
            raise ValueError(f"{type(self).__name__} is verl's sync replay buffer; trainer.v1.trainer_mode is "
                             f"{trainer_mode!r}: unset trainer.v1.sampler.custom_sampler for the async trainers")
        options = dict(sampler_kwargs or {})
        poll = options.pop("poll_interval", DEFAULT_POLL_INTERVAL)
        if not isinstance(poll, int | float) or isinstance(poll, bool) or not 0 < poll <= 60:
            raise ValueError(f"trainer.v1.sampler.sampler_kwargs.poll_interval must be seconds in (0, 60], got "
                             f"{poll!r}")
        if options:
            raise ValueError(f"unknown trainer.v1.sampler.sampler_kwargs for {type(self).__name__}: "
                             f"{', '.join(sorted(options))}; it takes poll_interval")
        super().__init__(trainer_mode, trainer_config, max_off_policy_threshold, max_off_policy_strategy,
                         sampler_kwargs, poll_interval=float(poll), **kwargs)

    def _sync_metadata_from_transfer_queue(self) -> None:
        super()._sync_metadata_from_transfer_queue()
        failed = {partition: sorted(keys) for partition, keys in self.failure_keys.items() if keys}
        if not failed:
            return
        where = "; ".join(f"{len(keys)} in {'validation' if partition == 'val' else 'training'} (uid "
                          f"{', '.join(keys[:NAMED])}{', ...' if len(keys) > NAMED else ''})"
                          for partition, keys in sorted(failed.items()))
        raise RolloutFailed(
            f"the rollout or reward of {sum(map(len, failed.values()))} prompt group(s) raised: {where}. verl would "
            "train on without them. Each error is logged above by an agent loop worker ('Error in _run_prompt for "
            "uid=...'). A query_type that no reward knows is the usual cause: add the module that registers it to "
            "reward.custom_reward_function.reward_kwargs.plugins, or fix the rows (medverl validate)."
        )
