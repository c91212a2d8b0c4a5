"""``rollout.name=hf``: rollouts with transformers ``generate`` on CPU, behind verl's token-in/token-out interface.

verl's agent loop sends each request to a replica's server actor (``HFServer.generate``: prompt token ids with the
image tokens already expanded, the images, sampling parameters) and gets back response token ids and their
log-probs, exactly as from its vLLM server. The actor's weights reach the server through ``HFServerAdapter``, the
per-worker client verl builds in each trainer process: every sync sends the full state dict over Ray.

One request is generated at a time. Vision tokens are never sampled (a sampled ``<|vision_start|>`` would break
verl's mRoPE index for the sample, which vLLM avoids the same way).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
# bytes of weights per Ray call when the actor's weights are sent to the server
BUCKET_BYTES = 256 << 20


def server_name(replica_rank: int) -> str:
    """The Ray actor name of a replica's server."""
    return f"hf_server_{replica_rank}"


class HFServer:
    """A Ray actor holding a transformers copy of the policy; generates one request at a time."""

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
        self.suppressed = [vocab[t] for t in VISION_TOKENS if t in vocab]
        self.image_token_id = getattr(model_config.hf_config, "image_token_id", None)
        eos = self.model.generation_config.eos_token_id
        self.eos = sorted({*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                           self.tokenizer.eos_token_id} - {None})
        self.lock = asyncio.Lock()
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))

    async def generate(self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str,
                       image_data: list | None = None, video_data: list | None = None, **_: Any) -> TokenOutput:
        """Sample one response: token ids and, when asked, their log-probs under the sampling temperature."""
        if video_data:
            raise ValueError("the hf rollout does not take videos")
        async with self.lock:
            return await asyncio.to_thread(self._generate, list(prompt_ids), dict(sampling_params), image_data)

    @torch.no_grad()
    def _generate(self, prompt_ids: list[int], params: dict[str, Any], images: list | None) -> TokenOutput:
        budget = self.config.prompt_length + self.config.response_length - len(prompt_ids)
        max_new = params.pop("max_tokens", None) or params.pop("max_new_tokens", None) or self.config.response_length
        max_new = max(1, min(max_new, self.config.response_length, budget))
        inputs: dict[str, Any] = {"input_ids": torch.tensor([prompt_ids])}
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if images:
            vision = self.processor.image_processor(images=images, return_tensors="pt")
            inputs["pixel_values"], inputs["image_grid_thw"] = vision["pixel_values"], vision["image_grid_thw"]
        if self.image_token_id is not None and self.processor is not None:
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.image_token_id).long()
        temperature = float(params.get("temperature") or 0.0)
        top_k = int(params.get("top_k") or -1)
        sampling = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": float(params.get("top_p") or 1.0),
                        "top_k": top_k if top_k > 0 else None}
        out = self.model.generate(
            **inputs, **sampling, max_new_tokens=max_new, eos_token_id=self.eos,
            pad_token_id=self.tokenizer.pad_token_id, suppress_tokens=self.suppressed or None,
            repetition_penalty=float(params.get("repetition_penalty") or 1.0),
            return_dict_in_generate=True, output_logits=True,
        )
        tokens = out.sequences[0, len(prompt_ids):]
        log_probs = None
        if params.get("logprobs"):
            logits = torch.stack(out.logits, dim=1)[0].float() / (temperature if temperature > 0 else 1.0)
            log_probs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0].tolist()
        return TokenOutput(token_ids=tokens.tolist(), log_probs=log_probs, stop_reason="completed",
                           extra_fields={"global_steps": self.global_steps})

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
        bucket, size = [], 0
        for name, tensor in weights:  # every rank iterates: gathering a sharded tensor is a collective
            if not self.sender:
                continue
            bucket.append((name, tensor.detach().to("cpu", copy=True)))
            size += tensor.numel() * tensor.element_size()
            if size >= BUCKET_BYTES:
                await self.server.load_weights.remote(bucket)
                bucket, size = [], 0
        if self.sender:
            if bucket:
                await self.server.load_weights.remote(bucket)
            if global_steps is not None:
                await self.server.set_global_steps.remote(global_steps)

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None
