"""The CPU platform, its patches of verl and the hf rollout, without a training run (tests/test_cpu_training.py has those).

Each patch of verl internals, and every other use of verl beyond its public API, is pinned to the source it was
written against: a verl upgrade that changes one fails here, and stops a CPU run at start-up, naming what changed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medverl import verl_pins
from medverl.cpu import patches
from medverl.training import replay_buffer

PROBE = r"""
import json, verl
from verl.plugin.platform.platform_manager import PlatformRegistry
from verl.utils import distributed
from verl.utils.device import get_device_name
from verl.workers.rollout import base
out = {"cpu_registered": PlatformRegistry.get("cpu") is not None,
       "gloo_patch": distributed.initialize_global_process_group.__module__,
       "hf_rollout": ("hf", "async") in base._ROLLOUT_REGISTRY}
if out["cpu_registered"]:
    out["device"] = get_device_name()
print("PROBE " + json.dumps(out))
"""


def _probe(**env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"} | env
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=environ, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("PROBE "))[6:])


def test_the_verl_objects_medverl_relies_on_are_the_ones_it_was_written_for() -> None:
    verl_pins.check(patches.PINS)
    verl_pins.check(replay_buffer.PINS)


@pytest.mark.parametrize("pins", [patches.PINS, replay_buffer.PINS], ids=["cpu", "replay_buffer"])
def test_a_changed_pin_fails_naming_the_verl_object_and_what_changed(pins: dict, monkeypatch) -> None:
    target = next(iter(pins))
    monkeypatch.setitem(pins, target, pins[target]._replace(sha256="0" * 64))
    with pytest.raises(verl_pins.VerlChanged) as raised:
        verl_pins.check(pins)
    message = str(raised.value)
    assert f"  {target}: sha256 {verl_pins.source_hash(target)}, pinned sha256 {'0' * 64}; medverl " in message
    assert message.count("pinned sha256") == 1 and "Install verl==0.9.1" in message


def test_a_verl_object_that_is_gone_is_named() -> None:
    pins = {"verl.workers.rollout.base:NoSuchClass": verl_pins.Pin("0" * 64, "subclasses it")}
    with pytest.raises(verl_pins.VerlChanged, match=r"verl.workers.rollout.base:NoSuchClass: gone \(AttributeError"):
        verl_pins.check(pins)


def test_the_replay_buffer_checks_its_pins_when_built(monkeypatch) -> None:
    from omegaconf import OmegaConf

    target = next(iter(replay_buffer.PINS))
    monkeypatch.setitem(replay_buffer.PINS, target, replay_buffer.PINS[target]._replace(sha256="0" * 64))
    with pytest.raises(verl_pins.VerlChanged, match=target):
        replay_buffer.StrictReplayBuffer("sync", OmegaConf.create({}), 8, "drop", OmegaConf.create({}))


# verl's entry-point loader (import verl) under a pin that does not match the installed verl
BROKEN = """
import medverl.cpu.patches as patches
target = "verl.workers.rollout.replica:RolloutReplica"
patches.PINS[target] = patches.PINS[target]._replace(sha256="0" * 64)
import verl
print("verl imported")
"""


def test_a_failed_activation_under_verl_platform_cpu_stops_the_process_naming_why() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    done = subprocess.run([sys.executable, "-c", BROKEN], capture_output=True, text=True, timeout=300,
                          env=environ | {"VERL_PLATFORM": "cpu"})
    assert done.returncode == 1 and "verl imported" not in done.stdout, done.stdout + done.stderr[-3000:]
    assert "VERL_PLATFORM=cpu, but medverl could not activate verl's CPU platform: VerlChanged" in done.stderr
    assert "verl.workers.rollout.replica:RolloutReplica: sha256 " in done.stderr
    # without VERL_PLATFORM=cpu the plugin does nothing, so nothing fails
    done = subprocess.run([sys.executable, "-c", BROKEN], capture_output=True, text=True, timeout=300, env=environ)
    assert done.returncode == 0 and "verl imported" in done.stdout, done.stderr[-3000:]


def test_without_verl_platform_cpu_verl_is_untouched() -> None:
    probe = _probe()
    assert probe == {"cpu_registered": False, "gloo_patch": "verl.utils.distributed", "hf_rollout": False}


def test_verl_platform_cpu_registers_the_platform_the_rollout_and_the_patches_in_every_verl_process() -> None:
    probe = _probe(VERL_PLATFORM="cpu")
    assert probe == {"cpu_registered": True, "gloo_patch": "medverl.cpu.patches", "hf_rollout": True, "device": "cpu"}


def test_the_device_module_answers_what_verl_asks_of_torch_cuda() -> None:
    from medverl.cpu.platform import PlatformCPU

    platform = PlatformCPU()
    module = platform.device_module
    free, total = module.mem_get_info()
    assert 0 < free <= total
    assert module.memory_allocated() == 0 and module.max_memory_reserved() == 0
    state = module.get_rng_state()
    module.set_rng_state(state)
    assert platform.current_device() == "cpu" and torch.zeros(1).to(platform.current_device()).device.type == "cpu"
    assert platform.communication_backend_name() == "gloo"
    assert not platform.is_platform_available(use_smi_check=True)  # never auto-detected


def _server(model: Path):
    """An HFServer (the Ray actor's class, used directly) over `model`."""
    from omegaconf import OmegaConf
    from verl.workers.config import RolloutConfig

    from medverl.cpu.rollout import HFServer

    config = RolloutConfig(name="hf", prompt_length=256, response_length=12)
    model_config = OmegaConf.create({"_target_": "verl.workers.config.HFModelConfig", "path": str(model)})
    return HFServer(config, model_config, replica_rank=0)


@pytest.fixture(scope="module")
def server(tiny_model: Path):
    """An HFServer over the tiny random Qwen2.5-VL."""
    return _server(tiny_model)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_the_server_never_samples_its_model_familys_vision_tokens(family: str, tiny_models) -> None:
    from medverl.models import get_family

    server = _server(tiny_models.model(family))
    vocab = server.tokenizer.get_vocab()
    assert server.suppressed == [vocab[t] for t in get_family(family).never_sample] and server.suppressed


def _image_prompt(server) -> tuple[list[int], list]:
    from PIL import Image

    image = Image.new("RGB", (56, 56), (120, 30, 200))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a nodule?"}]}]
    text = server.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = server.processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    return ids, [image]


def test_generate_takes_expanded_image_tokens_and_returns_log_probs_of_its_tokens(server) -> None:
    import asyncio

    prompt, images = _image_prompt(server)
    output = asyncio.run(server.generate(prompt, {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True},
                                         "r1", image_data=images))
    assert 1 <= len(output.token_ids) <= 12 and len(output.log_probs) == len(output.token_ids)
    assert all(lp <= 0 for lp in output.log_probs)
    assert not set(output.token_ids) & set(server.suppressed)  # never a vision token
    greedy = [asyncio.run(server.generate(prompt, {"temperature": 0, "logprobs": False}, "r2", image_data=images))
              for _ in range(2)]
    assert greedy[0].token_ids == greedy[1].token_ids and greedy[0].log_probs is None


def _prompts(server) -> list[tuple[list[int], list]]:
    """Image prompts of different lengths and colours, so that a batch of them is padded."""
    from PIL import Image

    prompts = []
    for i, question in enumerate(["Is there a nodule?", "Which stain was used for this section, and why?",
                                  "Describe it.", "Is the film pale, grey or dark? Answer with one word."]):
        image = Image.new("RGB", (56 + 28 * (i % 2), 56), (40 * i, 30, 200 - 40 * i))
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = server.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompts.append((server.processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist(),
                        [image]))
    return prompts


def test_requests_sent_together_are_one_batch_with_the_answers_each_would_get_alone(server, monkeypatch) -> None:
    import asyncio

    greedy = {"temperature": 0, "logprobs": True}
    prompts = _prompts(server)
    assert len({len(ids) for ids, _ in prompts}) > 1  # the batch is padded
    alone = [asyncio.run(server.generate(ids, dict(greedy), f"a{i}", image_data=images))
             for i, (ids, images) in enumerate(prompts)]
    calls = []
    generate = server._generate
    monkeypatch.setattr(server, "_generate", lambda batch: calls.append(len(batch)) or generate(batch))

    async def together():
        return await asyncio.gather(*(server.generate(ids, dict(greedy), f"t{i}", image_data=images)
                                      for i, (ids, images) in enumerate(prompts)))

    batched = asyncio.run(together())
    assert calls == [len(prompts)]
    for one, many in zip(alone, batched, strict=True):
        assert many.token_ids == one.token_ids
        assert many.log_probs == pytest.approx(one.log_probs, abs=1e-4)


def test_a_burst_is_split_by_sampling_parameters_and_each_request_keeps_its_own_length(server, monkeypatch) -> None:
    import asyncio

    calls = []
    generate = server._generate
    monkeypatch.setattr(server, "_generate", lambda batch: calls.append(len(batch)) or generate(batch))
    (ids, images), *_ = _prompts(server)
    sampled = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
    asks = [dict(sampled, max_tokens=3), dict(sampled), {"temperature": 0}, dict(sampled, logprobs=False)]

    async def burst():
        return await asyncio.gather(*(server.generate(ids, ask, f"b{i}", image_data=images)
                                      for i, ask in enumerate(asks)))

    outputs = asyncio.run(burst())
    assert sorted(calls) == [1, 3]  # the greedy request alone, the three sampled ones together
    assert 1 <= len(outputs[0].token_ids) <= 3 and 1 <= len(outputs[1].token_ids) <= 12
    assert len(outputs[0].log_probs) == len(outputs[0].token_ids)
    assert len(outputs[1].log_probs) == len(outputs[1].token_ids)
    assert outputs[2].log_probs is None and outputs[3].log_probs is None
    for output in outputs:
        ends = [i for i, t in enumerate(output.token_ids) if t in server.eos]
        assert ends in ([], [len(output.token_ids) - 1])  # cut at its own end-of-sequence, never padding after it
        assert not set(output.token_ids) & set(server.suppressed)


def test_an_error_in_a_batch_reaches_every_request_of_it_and_the_server_goes_on(server, monkeypatch) -> None:
    import asyncio

    (ids, images), *_ = _prompts(server)
    generate = server._generate

    def fail(batch):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(server, "_generate", fail)

    async def burst():
        return await asyncio.gather(*(server.generate(ids, {}, f"e{i}", image_data=images) for i in range(3)),
                                    return_exceptions=True)

    assert [str(e) for e in asyncio.run(burst())] == ["out of memory"] * 3
    monkeypatch.setattr(server, "_generate", generate)
    assert asyncio.run(server.generate(ids, {}, "after", image_data=images)).token_ids


def test_the_actors_weights_replace_the_servers(server) -> None:
    import asyncio

    from verl.utils.model import convert_weight_keys

    sent = convert_weight_keys({k: torch.zeros_like(v) for k, v in server.model.state_dict().items()}, server.model)
    name = next(n for n in sent if n.endswith("lm_head.weight") or "embed_tokens" in n)
    assert server.load_weights([(name, sent[name])]) == 1
    assert float(server.model.state_dict()[server.param_of[name]].abs().sum()) == 0.0
    with pytest.raises(KeyError, match="does not have"):
        server.load_weights([("no.such.weight", torch.zeros(1))])
    asyncio.run(server.set_global_steps(3))
    prompt, images = _image_prompt(server)
    assert asyncio.run(server.generate(prompt, {}, "r3", image_data=images)).extra_fields["global_steps"] == 3


def test_the_cpu_train_extra_installs_what_main_ppo_needs() -> None:
    from importlib.metadata import requires

    extra = {r.split(";")[0].split(">")[0].split("=")[0].strip() for r in requires("medverl") if "cpu-train" in r}
    assert {"TransferQueue", "pyzmq", "msgspec"} <= extra


def test_weights_travel_as_cpu_copies_in_buckets_of_the_limit() -> None:
    from medverl.cpu.rollout import weight_buckets

    weights = [(f"w{i}", torch.full((256,), float(i))) for i in range(5)]  # 1 KiB each
    buckets = list(weight_buckets(iter(weights), limit=2048))
    assert [[name for name, _ in bucket] for bucket in buckets] == [["w0", "w1"], ["w2", "w3"], ["w4"]]
    sent = buckets[0][0][1]
    assert torch.equal(sent, weights[0][1]) and sent.data_ptr() != weights[0][1].data_ptr()
