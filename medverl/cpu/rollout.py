"""``rollout.name=hf``: rollouts with transformers ``generate`` on CPU, behind verl's token-in/token-out interface.

verl's agent loop sends each request to a replica's server actor (``HFServer.generate``: prompt token ids with the
image tokens already expanded, the images, sampling parameters) and gets back response token ids and their
log-probs, exactly as from its vLLM server. The actor's weights reach the server through ``HFServerAdapter``, the
per-worker client verl builds in each trainer process: every sync sends the full state dict over Ray.

Requests that arrive together are generated together: one left-padded ``generate`` call per group of requests
with the same sampling parameters (at most ``max_num_seqs``), each row sampled independently as if alone and cut at
its own end. Vision tokens are never sampled (a sampled ``<|vision_start|>`` would break verl's mRoPE index for the
sample, which vLLM avoids the same way).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from medverl.models import family_of_config

logger = logging.getLogger(__name__)
logger.setLevel(os.environ.get("VERL_LOGGING_LEVEL", "WARN"))  # as verl's own modules

# bytes of weights per Ray call when the actor's weights are sent to the server
BUCKET_BYTES = 256 << 20
# how long the server waits for the rest of a burst of requests before it generates: up to 10 waits of 5 ms,
# ended by a wait in which no request arrived
GATHER_ROUNDS, GATHER_SECONDS = 10, 0.005


def weight_buckets(weights: Iterable[tuple[str, torch.Tensor]],
                   limit: int = BUCKET_BYTES) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The named tensors as CPU copies, in lists of about `limit` bytes: one Ray call each."""
    bucket, size = [], 0
    for name, tensor in weights:
        bucket.append((name, tensor.detach().to("cpu", copy=True)))
        size += tensor.numel() * tensor.element_size()
        if size >= limit:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def server_name(replica_rank: int) -> str:
    """The Ray actor name of a replica's server."""
    return f"hf_server_{replica_rank}"


@dataclass
class _Request:
    prompt_ids: list[int]
    params: dict[str, Any]
    images: list | None
    done: asyncio.Future

    def sampling(self) -> tuple:
        """What must be equal for requests to share one ``generate`` call."""
        p = self.params
        temperature = float(p.get("temperature") or 0.0)
        if temperature <= 0:
            return (0.0, 1.0, -1, float(p.get("repetition_penalty") or 1.0))
        return (temperature, float(p.get("top_p") or 1.0), int(p.get("top_k") or -1),
                float(p.get("repetition_penalty") or 1.0))


class HFServer:
    """A Ray actor holding a transformers copy of the policy; generates the requests waiting for it as one batch."""

    def __init__(self, config, model_config, replica_rank: int) -> None:
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
        from verl.utils.config import omega_conf_to_dataclass
        from verl.utils.model import convert_weight_keys
        from verl.workers.config import HFModelConfig

        model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.config, self.replica_rank, self.global_steps = config, replica_rank, None
        self.tokenizer, self.processor = model_config.tokenizer, model_config.processor
        auto = AutoModelForImageTextToText if self.processor is not None else AutoModelForCausalLM
        self.model = auto.from_pretrained(model_config.local_path, dtype=torch.float32, attn_implementation="sdpa",
                                          trust_remote_code=model_config.trust_remote_code).eval()
        own = list(self.model.state_dict())
        # the actor sends weights under their checkpoint names (verl's convert_weight_keys)
        self.param_of = dict(zip(convert_weight_keys(dict.fromkeys(own), self.model), own, strict=True))
        vocab = self.tokenizer.get_vocab()
        never_sample = () if self.processor is None else family_of_config(
            model_config.hf_config, where=model_config.local_path).never_sample
        self.suppressed = [vocab[t] for t in never_sample if t in vocab]
        self.image_token_id = getattr(model_config.hf_config, "image_token_id", None)
        eos = self.model.generation_config.eos_token_id
        self.eos = sorted({*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                           self.tokenizer.eos_token_id} - {None})
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos[0]
        self.max_batch = max(1, int(config.get("max_num_seqs") or 1))
        self.waiting: list[_Request] = []
        self.worker: asyncio.Task | None = None
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))

    async def generate(self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str,
                       image_data: list | None = None, video_data: list | None = None, **_: Any) -> TokenOutput:
        """Sample one response: token ids and, when asked, their log-probs under the sampling temperature."""
        if video_data:
            raise ValueError("the hf rollout does not take videos")
        request = _Request(list(prompt_ids), dict(sampling_params), image_data,
                           asyncio.get_running_loop().create_future())
        self.waiting.append(request)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._serve())
        return await request.done

    async def _serve(self) -> None:
        """Generate until nothing waits: each round takes the waiting requests that sample alike, up to max_num_seqs."""
        while self.waiting:
            # requests sent together reach the actor a few milliseconds apart: let them gather
            for _ in range(GATHER_ROUNDS):
                seen = len(self.waiting)
                await asyncio.sleep(GATHER_SECONDS)
                if len(self.waiting) == seen or len(self.waiting) >= self.max_batch:
                    break
            key = self.waiting[0].sampling()
            batch = [r for r in self.waiting if r.sampling() == key][: self.max_batch]
            taken = set(map(id, batch))
            self.waiting = [r for r in self.waiting if id(r) not in taken]
            start = time.perf_counter()
            try:
                outputs = await asyncio.to_thread(self._generate, batch)
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
                for request in batch:
                    if not request.done.done():
                        request.done.set_exception(exc)
            else:
                logger.debug("generated %d request(s), %d waiting, in %.3f s", len(batch), len(self.waiting),
                             time.perf_counter() - start)
                for request, output in zip(batch, outputs, strict=True):
                    if not request.done.done():
                        request.done.set_result(output)

    def _max_new(self, request: _Request) -> int:
        params = request.params
        budget = self.config.prompt_length + self.config.response_length - len(request.prompt_ids)
        wanted = params.get("max_tokens") or params.get("max_new_tokens") or self.config.response_length
        return max(1, min(wanted, self.config.response_length, budget))

    @torch.no_grad()
    def _generate(self, batch: list[_Request]) -> list[TokenOutput]:
        """One left-padded ``generate`` call for requests that sample alike; each row is cut at its own end."""
        width = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, request in enumerate(batch):
            input_ids[row, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            attention_mask[row, width - len(request.prompt_ids):] = 1
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        images = [image for r in batch for image in (r.images or [])]
        if images:
            vision = self.processor.image_processor(images=images, return_tensors="pt")
            inputs["pixel_values"], inputs["image_grid_thw"] = vision["pixel_values"], vision["image_grid_thw"]
        if self.image_token_id is not None and self.processor is not None:
            inputs["mm_token_type_ids"] = ((input_ids == self.image_token_id) & attention_mask.bool()).long()
        temperature, top_p, top_k, repetition_penalty = batch[0].sampling()
        sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p,
                        "top_k": top_k if top_k > 0 else None}
        limits = [self._max_new(r) for r in batch]
        out = self.model.generate(
            **inputs, **sampling, max_new_tokens=max(limits), eos_token_id=self.eos, pad_token_id=self.pad,
            suppress_tokens=self.suppressed or None, repetition_penalty=repetition_penalty,
            return_dict_in_generate=True, output_logits=True,
        )
        log_probs = None
        if any(r.params.get("logprobs") for r in batch):
            logits = torch.stack(out.logits, dim=1).float() / (temperature if temperature > 0 else 1.0)
            tokens = out.sequences[:, width:]
            log_probs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None])[..., 0]
        outputs = []
        for row, (request, limit) in enumerate(zip(batch, limits, strict=True)):
            tokens = out.sequences[row, width : width + limit].tolist()
            ends = [i for i, t in enumerate(tokens) if t in self.eos]
            length = ends[0] + 1 if ends else len(tokens)  # the end-of-sequence token is part of the response
            outputs.append(TokenOutput(
                token_ids=tokens[:length],
                log_probs=log_probs[row, :length].tolist() if request.params.get("logprobs") else None,
                stop_reason="completed", extra_fields={"global_steps": self.global_steps},
            ))
        return outputs

    def load_weights(self, named: list[tuple[str, torch.Tensor]]) -> int:
        """Copy the actor's tensors into the model; returns how many were copied."""
        params = self.model.state_dict()
        for name, tensor in named:
            if name not in self.param_of:
                raise KeyError(f"the actor sent weight {name!r}, which the rollout model does not have")
            params[self.param_of[name]].copy_(tensor)
        return len(named)

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def abort_all_requests(self, **_: Any) -> dict[str, Any]:
        return {}

    async def _nothing(self, *_: Any, **__: Any) -> None:
        """Memory management of GPU servers (sleep, wake-up, KV cache): nothing to do on CPU."""

    wake_up = sleep = clear_kv_cache = release_kv_cache = resume_kv_cache = _nothing
    resume_generation = start_profile = stop_profile = _nothing


class HFReplica(RolloutReplica):
    """One ``HFServer`` per replica, beside the trainer processes (hybrid mode)."""

    async def launch_servers(self) -> None:
        server = ray.remote(HFServer).options(
            name=server_name(self.replica_rank), num_cpus=0, max_concurrency=self.max_concurrency,
        ).remote(self.config, self.model_config, self.replica_rank)
        self.servers = [server]
        # private attributes that verl's LLMServerManager reads (pinned in medverl.cpu.patches.PINS)
        self._server_handle = server
        self._server_address = f"hf-replica-{self.replica_rank}"

    def rollout_worker_use_gpu(self) -> bool:
        return False


class HFServerAdapter(BaseRollout):
    """The trainer-side client of a replica's ``HFServer``: sends it the actor's weights after each update."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1, **_: Any) -> None:
        super().__init__(config, model_config, device_mesh)
        world = (self.config.tensor_model_parallel_size * self.config.data_parallel_size
                 * self.config.pipeline_model_parallel_size)
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.sender = rank % world == 0
        self._server = None

    @property
    def server(self):
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def update_weights(self, weights, global_steps: int | None = None, wire_format: str = "named_tensors",
                             **_: Any) -> None:
        if wire_format != "named_tensors":
            raise ValueError(f"the hf rollout takes full tensors (named_tensors), not {wire_format!r}")
        if not self.sender:
            for _ in weights:  # every rank iterates: gathering a sharded tensor is a collective
                pass
            return
        for bucket in weight_buckets(weights):
            await self.server.load_weights.remote(bucket)
        if global_steps is not None:
            await self.server.set_global_steps.remote(global_steps)

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None
