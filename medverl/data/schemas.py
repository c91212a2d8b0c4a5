"""The parquet layouts medverl writes, as explicit pyarrow schemas (never inferred from a first batch).

RL (verl's ``RLHFDataset``, the seed's RLVR format)::

    data_source  string                         benchmark or corpus name; verl groups val metrics by it
    prompt       list<{role, content}>          chat messages; one "<image>" in the content per image
    images       list<image>                    in placeholder order; [] for text-only rows
    ability      string
    reward_model {style: "rule", ground_truth}  ground_truth is one string; several answers are a JSON list
    extra_info   {split, index, query_type, options, question, source, image_meta, meta}

SFT (verl's ``MultiTurnSFTDataset``)::

    messages     list<{role, content}>          system | user | assistant; "<image>" placeholders in content
    images       list<image>
    extra_info   {index, source, image_meta}

CPT (medverl's own, for captions and interleaved documents; every text segment is trained on)::

    data_source  string
    kind         string                         "caption" | "interleaved"
    segments     list<{type, text}>             type "text" (text set) or "image" (text null), in reading order
    images       list<image>                    one per image segment, same order
    extra_info   {index, source, image_meta}

QC scores (``medverl qc score``; one row per scored record)::

    index, source, subset, scorer               the record and where it came from
    medical_correctness ... practicality        the five dimensions in [0, 1] (null: not scored)
    mean, failed_checks, rationale, status, error, image_hashes, thumbnail, text, record (the input, as JSON)

``image`` is ``{bytes, path}`` (verl's layout), plus ``max_pixels`` / ``min_pixels`` when a job sets them:
verl forwards extra keys of an image dict to ``qwen_vl_utils.fetch_image``, so the resolution of a stage is a
property of its parquet, with no re-encoding. ``image_meta`` is a JSON list, one object per image (DICOM window,
modality, conversions), "[]" when there is nothing to say. RL ``meta`` is the record's own ``meta`` object as JSON
("{}" when none): what evaluation groups scores by (answer type, language, question type, modality).
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2
KINDS = ("rl", "sft", "cpt")
IMAGE_PLACEHOLDER = "<image>"  # where an image goes in RL prompt and SFT message text
RESOLUTION_KEYS = ("max_pixels", "min_pixels")

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SEGMENT = pa.struct([("type", pa.string()), ("text", pa.string())])


def image_struct_type(resolution_keys: tuple[str, ...] = ()) -> pa.StructType:
    """``{bytes, path}`` plus the resolution keys a job sets (each must then be set on every image)."""
    unknown = set(resolution_keys) - set(RESOLUTION_KEYS)
    if unknown:
        raise ValueError(f"unknown image keys {sorted(unknown)}; known: {', '.join(RESOLUTION_KEYS)}")
    fields = [("bytes", pa.binary()), ("path", pa.string())]
    fields += [(key, pa.int64()) for key in RESOLUTION_KEYS if key in resolution_keys]
    return pa.struct(fields)


def _provenance() -> list[tuple[str, pa.DataType]]:
    return [("index", pa.int64()), ("source", pa.string()), ("image_meta", pa.string())]


def rl_schema(resolution_keys: tuple[str, ...] = ()) -> pa.Schema:
    """verl's RL parquet."""
    extra_info = pa.struct(
        [
            ("split", pa.string()),
            ("index", pa.int64()),
            ("query_type", pa.string()),
            ("options", pa.list_(pa.string())),
            ("question", pa.string()),
            ("source", pa.string()),
            ("image_meta", pa.string()),
            ("meta", pa.string()),
        ]
    )
    return pa.schema(
        [
            pa.field("data_source", pa.string(), nullable=False),
            pa.field("prompt", pa.list_(MESSAGE), nullable=False),
            pa.field("images", pa.list_(image_struct_type(resolution_keys)), nullable=False),
            pa.field("ability", pa.string(), nullable=False),
            pa.field(
                "reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())]), nullable=False
            ),
            pa.field("extra_info", extra_info, nullable=False),
        ],
        metadata={"medverl.kind": "rl", "medverl.schema_version": str(SCHEMA_VERSION)},
    )


def sft_schema(resolution_keys: tuple[str, ...] = ()) -> pa.Schema:
    """verl's multi-turn SFT parquet."""
    return pa.schema(
        [
            pa.field("messages", pa.list_(MESSAGE), nullable=False),
            pa.field("images", pa.list_(image_struct_type(resolution_keys)), nullable=False),
            pa.field("extra_info", pa.struct(_provenance()), nullable=False),
        ],
        metadata={"medverl.kind": "sft", "medverl.schema_version": str(SCHEMA_VERSION)},
    )


def cpt_schema(resolution_keys: tuple[str, ...] = ()) -> pa.Schema:
    """medverl's continual-pretraining parquet (captions and interleaved documents)."""
    return pa.schema(
        [
            pa.field("data_source", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),
            pa.field("segments", pa.list_(SEGMENT), nullable=False),
            pa.field("images", pa.list_(image_struct_type(resolution_keys)), nullable=False),
            pa.field("extra_info", pa.struct(_provenance()), nullable=False),
        ],
        metadata={"medverl.kind": "cpt", "medverl.schema_version": str(SCHEMA_VERSION)},
    )


# The seeds' five-dimensional quality assessment.
QC_DIMENSIONS = ("medical_correctness", "fluency", "relevance", "completeness", "practicality")


def qc_scores_schema() -> pa.Schema:
    """The scores ``medverl qc score`` writes."""
    return pa.schema(
        [("index", pa.int64()), ("source", pa.string()), ("subset", pa.string()), ("scorer", pa.string())]
        + [(d, pa.float64()) for d in QC_DIMENSIONS]
        + [("mean", pa.float64()), ("failed_checks", pa.list_(pa.string())), ("rationale", pa.string()),
           ("status", pa.string()), ("error", pa.string()), ("image_hashes", pa.list_(pa.string())),
           ("thumbnail", pa.binary()), ("text", pa.string()), ("record", pa.string())],
        metadata={"medverl.kind": "qc_scores", "medverl.schema_version": str(SCHEMA_VERSION)},
    )


def schema_for(kind: str, resolution_keys: tuple[str, ...] = ()) -> pa.Schema:
    """The schema of one output kind ("rl", "sft" or "cpt")."""
    builders = {"rl": rl_schema, "sft": sft_schema, "cpt": cpt_schema}
    if kind not in builders:
        raise ValueError(f"unknown parquet kind {kind!r}; known: {', '.join(KINDS)}")
    return builders[kind](resolution_keys)
