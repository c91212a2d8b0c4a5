"""verl's ``verl.plugins`` entry point: with ``VERL_PLATFORM=cpu``, registers the CPU platform, the ``hf`` rollout
and the CPU patches in every process that imports verl; otherwise does nothing."""

import os

if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
    from medverl.cpu import activate

    activate()
