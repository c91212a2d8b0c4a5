"""verl's ``verl.plugins`` entry point: with ``VERL_PLATFORM=cpu``, registers the CPU platform, the ``hf`` rollout
and the CPU patches in every process that imports verl; otherwise does nothing.

verl loads entry points inside ``except Exception`` and logs a failure at debug level only, so a failed activation
would leave a CPU run on verl's GPU defaults, to fail later in some obscure way: under ``VERL_PLATFORM=cpu`` a failure
stops the process (``SystemExit`` passes verl's handler) with its reason.
"""

import logging
import os

if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
    try:
        from medverl.cpu import activate

        activate()
    except Exception as exc:
        logging.getLogger(__name__).error("medverl could not activate verl's CPU platform", exc_info=True)
        raise SystemExit(f"VERL_PLATFORM=cpu, but medverl could not activate verl's CPU platform: "
                         f"{type(exc).__name__}: {exc}") from exc
