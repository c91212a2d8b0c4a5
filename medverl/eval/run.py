"""`medverl eval run`: greedy answers for prepared benchmarks, with vLLM (GPU) or transformers ``generate`` (CPU).

Both backends see the same prompt, built the way verl builds a row's prompt at rollout: the parquet's own prompt (the
training template), each ``<image>`` placeholder replaced by the row's next image (verl's
``RLHFDataset._build_messages``), each image resized by ``qwen_vl_utils`` to the resolution the row carries
(``max_pixels``/``min_pixels`` in its image dict, as in training), and the text rendered by the model processor's chat
template. vLLM gets that text and the images (``LLM.generate``); the ``hf`` backend tokenizes batches of them with the
processor, left-padded, and decodes greedily with ``generate``, never producing a vision token.

Writes the predictions JSONL that ``medverl eval score`` reads. A row that cannot be turned into a prompt (an image
that does not decode, placeholders that do not match the images) is not generated: it is listed with its reason in
``OUTPUT.rejects.jsonl`` beside the predictions, and ``eval score`` counts it as a missing prediction (scored 0).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from medverl.arguments import EXIT_NOTHING_USABLE, EXIT_OK, positive_int
from medverl.data.job import Reject
from medverl.data.prepared import open_prepared
from medverl.data.schemas import IMAGE_PLACEHOLDER, RESOLUTION_KEYS
from medverl.errors import ConfigError
from medverl.models import family_of_config

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "vllm", "hf")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_BATCH_SIZE = {"vllm": 64, "hf": 8}
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
_PLACEHOLDER = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)})")


@dataclass(frozen=True)
class Prompt:
    """What a backend generates from: the chat-template text and the row's images, resized, in placeholder order."""

    text: str
    images: list = field(default_factory=list)


@dataclass
class RunSummary:
    """What ``eval run`` did: predictions written, rows rejected (by reason) and where each list is."""

    output: Path
    rejects: Path
    backend: str
    written: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())


def rejects_path(output: str | Path) -> Path:
    """Where ``eval run`` lists the rows it could not generate for: ``NAME.rejects.jsonl`` beside the output."""
    output = Path(output)
    return output.with_name(f"{output.name.removesuffix('.jsonl')}.rejects.jsonl")


def _where(row: dict) -> str:
    return f"{row.get('data_source')} index {(row.get('extra_info') or {}).get('index')}"


def row_messages(row: dict) -> list[dict]:
    """The row's prompt as verl hands it to the processor (``RLHFDataset._build_messages``): in a row with images,
    each message's text split at ``<image>``, each placeholder an ``{"type": "image", "image": PIL, **resolution}``
    item in order; a text-only row's messages unchanged.

    Raises:
        Reject: an image that does not decode, or placeholders that do not match the images.
    """
    from PIL import Image

    images = list(row.get("images") or [])
    messages = [dict(m) for m in row["prompt"]]
    if not images:
        return messages
    used = 0
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            continue
        parts = []
        for segment in filter(None, _PLACEHOLDER.split(content)):
            if segment != IMAGE_PLACEHOLDER:
                parts.append({"type": "text", "text": segment})
                continue
            if used >= len(images):
                raise Reject("placeholder_mismatch", f"{_where(row)}: more {IMAGE_PLACEHOLDER} placeholders "
                                                          f"than its {len(images)} image(s)")
            image = images[used]
            used += 1
            data = image.get("bytes") if isinstance(image, dict) else None
            if not data:
                raise Reject("bad_image", f"{_where(row)}: image {used} has no bytes")
            try:
                decoded = Image.open(BytesIO(data))
                decoded.load()  # a truncated file fails here, not later inside a batch
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise Reject("bad_image", f"{_where(row)}: image {used} does not decode: "
                                               f"{type(exc).__name__}: {exc}") from None
            resolution = {k: image[k] for k in RESOLUTION_KEYS if image.get(k) is not None}
            parts.append({"type": "image", "image": decoded, **resolution})
        message["content"] = parts
    if used != len(images):
        raise Reject("placeholder_mismatch", f"{_where(row)}: {len(images)} image(s) but {used} "
                                                  f"{IMAGE_PLACEHOLDER} placeholder(s)")
    return messages


class ModelFiles:
    """A model's tokenizer, processor (None for a text-only model), config and model family (None for a text-only
    model), checked to fit each other."""

    def __init__(self, model: str) -> None:
        check_model_directory(model)
        from transformers import AutoConfig, AutoProcessor, AutoTokenizer

        try:
            self.config = AutoConfig.from_pretrained(model)
            processor = AutoProcessor.from_pretrained(model)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{model}: cannot load its config and processor: {exc}") from None
        if getattr(processor, "image_processor", None) is None:  # a text-only model: AutoProcessor gave a tokenizer
            self.processor = None
            has_template = hasattr(processor, "apply_chat_template")
            self.tokenizer = processor if has_template else AutoTokenizer.from_pretrained(model)
        else:
            self.processor, self.tokenizer = processor, processor.tokenizer
        if problems := self.mismatches(model):
            raise ConfigError(f"{model}: the processor does not fit the model: " + "; ".join(problems))
        self.family = None if self.processor is None else family_of_config(self.config, where=model)

    def mismatches(self, model: str) -> list[str]:
        """Why the tokenizer and processor do not belong to the model's config (empty when they do)."""
        problems = []
        text_config = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        vocab = getattr(text_config, "vocab_size", None)
        if vocab is not None and len(self.tokenizer) > vocab:
            problems.append(f"its tokenizer has {len(self.tokenizer)} tokens, more than the model's vocabulary of "
                            f"{vocab} (config.json): the tokenizer belongs to another model")
        image_token = getattr(self.processor, "image_token", None)
        wanted = getattr(self.config, "image_token_id", None)
        if wanted is None:
            wanted = getattr(self.config, "image_token_index", None)
        if image_token is not None and wanted is not None:
            got = self.tokenizer.convert_tokens_to_ids(image_token)
            if got != wanted:
                problems.append(f"the processor's image token {image_token} is id {got} in its tokenizer, the model "
                                f"expects image_token_id {wanted} (config.json)")
        if self.processor is None and wanted is not None:
            problems.append("the model takes images (config.json has an image token) but the directory has no image "
                            "processor (preprocessor_config.json)")
        return problems

    def prompt(self, row: dict) -> Prompt:
        """The row's prompt text and resized images, as verl's agent loop renders them.

        Raises:
            Reject: see :func:`row_messages`; also an image row for a model without an image processor.
        """
        messages = row_messages(row)
        if self.processor is None:
            if row.get("images"):
                raise Reject("no_image_processor", f"{_where(row)} has images; the model has no image processor")
            return Prompt(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        images: list = []
        if row.get("images"):
            from qwen_vl_utils import process_vision_info

            try:
                # the patch size verl's agent loop gives qwen_vl_utils
                images, _ = process_vision_info(messages, image_patch_size=self.family.patch_size)
            except (OSError, ValueError, SyntaxError) as exc:
                raise Reject("bad_image", f"{_where(row)}: an image cannot be resized: {exc}") from None
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return Prompt(text, list(images or []))


def check_model_directory(model: str) -> None:
    """A local model directory must hold a Hugging Face model (config.json and weights); raises ConfigError."""
    path = Path(model).expanduser()
    looks_local = path.is_absolute() or model.startswith((".", "~")) or model.count("/") != 1
    if not path.exists():
        if looks_local:
            raise ConfigError(f"--model {model}: no such directory; pass a Hugging Face model directory (config.json, "
                              "weights, tokenizer and processor files) or a hub id")
        return  # a hub id
    if not path.is_dir():
        raise ConfigError(f"--model {model}: not a directory")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{model}: no config.json, not a Hugging Face model directory (a verl checkpoint is "
                          "merged into one with python -m verl.model_merger merge, or saved with hf_model in "
                          "checkpoint.save_contents, in its huggingface/ folder)")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise ConfigError(f"{model}: no weights (*.safetensors or pytorch_model*.bin) beside its config.json; a "
                          "tokenizer or processor directory cannot generate")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve_backend(backend: str) -> str:
    """``auto``: vLLM on CUDA when it is installed (as ``medverl pipeline`` picks the GPU path), else ``hf``."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return "vllm" if cuda_available() and importlib.util.find_spec("vllm") is not None else "hf"


class Generator(Protocol):
    """A loaded model that answers prompts greedily, in order."""

    batch_size: int

    def __call__(self, prompts: Sequence[Prompt]) -> list[str]: ...

    def close(self) -> None: ...


class HFGenerator:
    """transformers ``generate``: greedy, batched with left padding and attention masks, vision tokens suppressed."""

    def __init__(self, model: str, files: ModelFiles, *, max_tokens: int, batch_size: int, device: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.files, self.max_tokens, self.batch_size = files, max_tokens, batch_size
        self.device = torch.device(device)
        auto = AutoModelForImageTextToText if files.processor is not None else AutoModelForCausalLM
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        try:
            self.model = auto.from_pretrained(model, dtype=dtype, attn_implementation="sdpa").to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{model}: cannot load its weights: {exc}") from None
        tokenizer = files.tokenizer
        tokenizer.padding_side = "left"  # generation continues every prompt from its last token
        vocab = tokenizer.get_vocab()
        # a random or weak model may sample a vision token, which verl's mRoPE index (and vLLM) cannot take
        never_sample = files.family.never_sample if files.family is not None else ()
        self.suppressed = [vocab[t] for t in never_sample if t in vocab] or None
        eos = self.model.generation_config.eos_token_id
        self.eos = sorted({*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                           tokenizer.eos_token_id} - {None})
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos[0]

    def __call__(self, prompts: Sequence[Prompt]) -> list[str]:
        return [self.files.tokenizer.decode(tokens, skip_special_tokens=True) for tokens in self.token_ids(prompts)]

    def token_ids(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """The generated token ids of each prompt, up to (not including) its first end-of-sequence token."""
        import torch

        texts = [p.text for p in prompts]
        images = [image for p in prompts for image in p.images]
        if self.files.processor is not None:
            inputs = self.files.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        else:
            # the template already holds any BOS, as verl's tokenize=True rendering has it
            inputs = self.files.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.no_grad():
            out = self.model.generate(
                **inputs, do_sample=False, max_new_tokens=self.max_tokens, eos_token_id=self.eos, pad_token_id=self.pad,
                suppress_tokens=self.suppressed, repetition_penalty=1.0,  # as vLLM's SamplingParams(temperature=0)
                temperature=None, top_p=None, top_k=None,
            )
        answers = []
        for tokens in out[:, inputs["input_ids"].shape[1]:].tolist():
            ends = [i for i, t in enumerate(tokens) if t in self.eos]  # then padding, in a batch
            answers.append(tokens[: ends[0]] if ends else tokens)
        return answers

    def close(self) -> None:
        del self.model
        gc.collect()


class VLLMGenerator:
    """vLLM's offline engine, greedy, on the same prompt text and images as the ``hf`` backend."""

    def __init__(self, model: str, *, max_tokens: int, batch_size: int, tensor_parallel_size: int, max_images: int):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise ConfigError(f"the vllm backend needs vLLM (pip install -e '.[train]' on a GPU machine), or use "
                              f"--backend hf: {exc}") from exc
        self.batch_size = batch_size
        self.llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size,
                       limit_mm_per_prompt={"image": max(max_images, 1)})
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)

    def __call__(self, prompts: Sequence[Prompt]) -> list[str]:
        requests = [{"prompt": p.text, **({"multi_modal_data": {"image": p.images}} if p.images else {})}
                    for p in prompts]
        return [out.outputs[0].text for out in self.llm.generate(requests, self.sampling, use_tqdm=False)]

    def close(self) -> None:
        del self.llm
        gc.collect()
        if cuda_available():
            import torch

            torch.cuda.empty_cache()


def load_generator(
    model: str, files: ModelFiles, backend: str, *, max_tokens: int, batch_size: int | None = None,
    tensor_parallel_size: int = 1, device: str = "auto", max_images: int = 1,
) -> Generator:
    """A loaded `backend` (``vllm`` or ``hf``; resolve ``auto`` first) for `model`."""
    batch_size = batch_size or DEFAULT_BATCH_SIZE[backend]
    if backend == "vllm":
        return VLLMGenerator(model, max_tokens=max_tokens, batch_size=batch_size,
                             tensor_parallel_size=tensor_parallel_size, max_images=max_images)
    return HFGenerator(model, files, max_tokens=max_tokens, batch_size=batch_size, device=device)


def read_rows(data_dirs: Iterable[str | Path]) -> list[dict]:
    """Every row of the prepared RL directories, in order; raises ConfigError when there is none."""
    data_dirs = list(data_dirs)
    rows = [row for d in data_dirs for row in open_prepared(d, ("rl",)).rows()]
    if not rows:
        raise ConfigError(f"no rows in {', '.join(map(str, data_dirs))}")
    return rows


def write_predictions(
    generator: Generator, files: ModelFiles, rows: Sequence[dict], output: str | Path, *, backend: str = "",
    progress: bool = True, desc: str = "eval run",
) -> RunSummary:
    """Generate for `rows` in batches; predictions to `output` (written whole, then renamed), rows that cannot be
    prompted to :func:`rejects_path`."""
    output = Path(output)
    summary = RunSummary(output, rejects_path(output), backend)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp_rejects = summary.rejects.with_name(f".{summary.rejects.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f, tmp_rejects.open("w", encoding="utf-8") as rejects, \
            tqdm(total=len(rows), desc=desc, unit=" rows", disable=not progress) as bar:
        for start in range(0, len(rows), generator.batch_size):
            batch, prompts = [], []
            for row in rows[start : start + generator.batch_size]:
                try:
                    prompts.append(files.prompt(row))
                    batch.append(row)
                except Reject as exc:
                    summary.rejected_by_reason[exc.code] += 1
                    rejects.write(json.dumps({"data_source": row["data_source"], "index": row["extra_info"]["index"],
                                              "code": exc.code, "reason": exc.reason}, ensure_ascii=False) + "\n")
            for row, response in zip(batch, generator(prompts) if prompts else [], strict=True):
                f.write(json.dumps({"data_source": row["data_source"], "index": row["extra_info"]["index"],
                                    "response": response}, ensure_ascii=False) + "\n")
                summary.written += 1
            bar.update(len(rows[start : start + generator.batch_size]))
    os.replace(tmp, output)
    if summary.rejected:
        os.replace(tmp_rejects, summary.rejects)
    else:
        tmp_rejects.unlink()
        summary.rejects.unlink(missing_ok=True)  # a previous run's
    logger.info("wrote %d predictions to %s, %d rows rejected", summary.written, output, summary.rejected)
    return summary


def generate(
    model: str, data_dirs: Sequence[str | Path], output: str | Path, *, max_tokens: int = 2048,
    tensor_parallel_size: int = 1, batch_size: int | None = None, backend: str = "auto", device: str = "auto",
    progress: bool = True,
) -> RunSummary:
    """Greedy answers for every row of `data_dirs` with `backend` (see :func:`resolve_backend`), into `output`."""
    backend = resolve_backend(backend)
    rows = read_rows(data_dirs)
    files = ModelFiles(model)
    generator = load_generator(model, files, backend, max_tokens=max_tokens, batch_size=batch_size,
                               tensor_parallel_size=tensor_parallel_size, device=device,
                               max_images=max(len(r.get("images") or []) for r in rows))
    try:
        return write_predictions(generator, files, rows, output, backend=backend, progress=progress)
    finally:
        generator.close()


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The generation options ``eval run`` and ``eval checkpoints`` share."""
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="vllm (GPU), hf (transformers generate, "
                        "CPU or GPU), or auto: vllm when a CUDA GPU is visible and vLLM is installed, else hf")
    parser.add_argument("--max-tokens", type=positive_int, default=2048, help="tokens generated per answer at most")
    parser.add_argument("--batch-size", type=positive_int, help=f"prompts per generate call (default: "
                        f"{DEFAULT_BATCH_SIZE['vllm']} with vllm, {DEFAULT_BATCH_SIZE['hf']} with hf)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="hf backend: where the model runs (auto: "
                        "cuda when visible)")
    parser.add_argument("--tensor-parallel-size", type=positive_int, default=1, help="vllm backend: GPUs per model "
                        "replica")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl eval run``'s arguments."""
    parser.add_argument("--model", required=True, help="model directory or hub id to generate with")
    parser.add_argument("--data", nargs="+", required=True, help="prepared benchmark directories (eval prepare)")
    parser.add_argument("--output", required=True, help="predictions JSONL ({data_source, index, response} per "
                        "line); rows that cannot be prompted go to OUTPUT.rejects.jsonl")
    add_generation_arguments(parser)


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl eval run``: exit status 1 when a row was rejected (it scores 0 as a missing prediction)."""
    summary = generate(args.model, args.data, args.output, max_tokens=args.max_tokens,
                       tensor_parallel_size=args.tensor_parallel_size, batch_size=args.batch_size,
                       backend=args.backend, device=args.device)
    print(f"{summary.written} predictions ({summary.backend}) -> {summary.output}")
    if summary.rejected:
        reasons = ", ".join(f"{code} {n}" for code, n in sorted(summary.rejected_by_reason.items()))
        print(f"{summary.rejected} row(s) not generated ({reasons}), each with its reason in {summary.rejects}; "
              "eval score counts them as missing predictions", file=sys.stderr)
        return EXIT_NOTHING_USABLE
    return EXIT_OK if summary.written else EXIT_NOTHING_USABLE
