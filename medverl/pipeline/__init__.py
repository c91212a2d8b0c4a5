"""`medverl pipeline`: CPT -> SFT stages -> GRPO on verl, in order, from one small YAML file; resumable.

Each stage runs one recipe on prepared data (``medverl prep`` output directories) with the trainer of its kind
(:mod:`medverl.stages`): verl's SFT trainer (torchrun) for CPT and SFT, ``main_ppo`` for GRPO; the model a stage
saves (``hf_model``) is linked as ``OUTPUT/STAGE/model`` and is the next stage's starting point. Finished stages are
recorded in ``OUTPUT/pipeline_state.json``; rerunning the same command resumes at the first unfinished stage (verl
itself resumes that stage from its last checkpoint). Data is checked before anything runs: every directory must be a
complete ``medverl prep`` job of the kind the stage trains on, prepared with the stage's ``max_pixels`` (the
low-to-high resolution schedule).

An eval stage (``kind: eval``) generates greedy answers with the starting model and every earlier stage's saved
model (or the ``checkpoints`` it names) on prepared benchmarks and scores them (``medverl eval checkpoints``): one
table, a row per checkpoint and a column per benchmark, written beside ``curves.png`` (``eval_table.md``, ``.png``,
``.json``) and added to ``summary.md``. Its benchmarks and checkpoints are checked before anything runs too.

The file's keys: :mod:`medverl.pipeline.file`; commands and checks: :mod:`medverl.pipeline.plan`; running:
:mod:`medverl.pipeline.run`.
"""

from medverl.pipeline.file import EvalStage, PipelineError, Stage
from medverl.pipeline.plan import DEFAULT_RECIPES, Pipeline
from medverl.pipeline.run import StageFailed, add_arguments, run_command, run_pipeline

__all__ = ["DEFAULT_RECIPES", "EvalStage", "Pipeline", "PipelineError", "Stage", "StageFailed", "add_arguments",
           "run_command", "run_pipeline"]
