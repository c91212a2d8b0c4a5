"""CPU rollouts (``rollout.name=hf``): one GRPO step's generation batched vs one request at a time, in one run.

    python benchmarks/rollout_batching.py [--model DIR] [--prompts 8] [--n 8] [--max-tokens 64] [--repeats 2]

The requests are a GRPO step of the CPU example: the first ``--prompts`` prompts of the synthetic stain task
(prepared with ``medverl prep rl`` and rendered as verl's agent loop renders them), each asked ``--n`` times with
temperature 1 and log-probs, as verl's agent loop sends them to ``HFServer.generate``. The baseline, measured in the
same process on the same requests, awaits each request before sending the next (the server's behaviour before it
batched); the batched run sends them all at once. The best of ``--repeats`` counts.

It also times the weight sync: the full state dict sent to the server as a Ray actor in the buckets the trainer
uses (``HFServerAdapter.update_weights``), against the batched step's generation time.

The default model is a fresh tiny random Qwen2.5-VL (the example's starting model), which rarely stops before
``--max-tokens``; pass ``--model`` a trained checkpoint to see responses of mixed lengths, where a batch runs until
its longest response ends. Target: batched at least 3x faster than one at a time on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 3.0
ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "examples" / "data" / "stain_rl.jsonl"


def requests(model: Path, work: Path, prompts: int) -> list[tuple[list[int], list]]:
    """Prompt token ids (image tokens expanded) and images of the task's first `prompts` rows."""
    import pandas as pd

    from medverl.eval.run import ModelFiles

    subprocess.run([sys.executable, "-m", "medverl", "prep", "rl", str(TASK), "--output", str(work / "rl"),
                    "--image-root", str(TASK.parent / "images"), "--max-pixels", "802816"],
                   check=True, stdout=subprocess.DEVNULL)
    files = ModelFiles(str(model))
    rows = pd.read_parquet(next((work / "rl").rglob("*.parquet"))).head(prompts).to_dict("records")
    out = []
    for row in rows:
        prompt = files.prompt(row)
        ids = files.processor(text=[prompt.text], images=prompt.images, return_tensors="pt")["input_ids"][0]
        out.append((ids.tolist(), prompt.images))
    return out


def server_for(model: Path, max_tokens: int, prompt_length: int):
    from omegaconf import OmegaConf
    from verl.workers.config import RolloutConfig

    from medverl.cpu.rollout import HFServer

    config = RolloutConfig(name="hf", prompt_length=prompt_length, response_length=max_tokens)
    model_config = OmegaConf.create({"_target_": "verl.workers.config.HFModelConfig", "path": str(model)})
    return config, model_config, HFServer(config, model_config, replica_rank=0)


def time_generation(server, asks: list[tuple[list[int], list]], n: int, max_tokens: int, batched: bool):
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True, "max_tokens": max_tokens}

    async def run():
        calls = [(ids, images, f"{p}-{k}") for p, (ids, images) in enumerate(asks) for k in range(n)]
        if batched:
            return await asyncio.gather(*(server.generate(ids, dict(params), rid, image_data=images)
                                          for ids, images, rid in calls))
        return [await server.generate(ids, dict(params), rid, image_data=images) for ids, images, rid in calls]

    start = time.perf_counter()
    outputs = asyncio.run(run())
    seconds = time.perf_counter() - start
    return seconds, sum(len(o.token_ids) for o in outputs)


def time_weight_sync(config, model_config, state: dict, repeats: int) -> float:
    """Seconds to send the whole state dict to a Ray actor server, bucketed as the trainer sends it."""
    import ray

    from medverl.cpu.rollout import HFServer, weight_buckets

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        actor = ray.remote(HFServer).options(num_cpus=0, max_concurrency=1000).remote(config, model_config, 0)
        ray.get(actor.set_global_steps.remote(0))
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for bucket in weight_buckets(state.items()):
                ray.get(actor.load_weights.remote(bucket))
            best = min(best, time.perf_counter() - start)
        return best
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a model directory (default: a fresh tiny random Qwen2.5-VL)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8, help="rollouts per prompt (rollout.n)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from verl.utils.model import convert_weight_keys

    from medverl.training.tiny_model import save_tiny_model

    threads = int(os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # HFServer sets torch's threads from it, as under Ray
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model.resolve() if args.model else save_tiny_model(work / "tiny_model")
        asks = requests(model, work, args.prompts)
        config, model_config, server = server_for(model, args.max_tokens, max(len(ids) for ids, _ in asks) + 8)
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {threads}; "
              f"{len(asks)} prompts x {args.n} rollouts, up to {args.max_tokens} tokens, model {model.name}")
        time_generation(server, asks[:1], 2, 4, batched=True)  # warm-up
        results = {}
        for batched in (False, True):
            results[batched] = min((time_generation(server, asks, args.n, args.max_tokens, batched)
                                    for _ in range(args.repeats)), key=lambda r: r[0])
            seconds, tokens = results[batched]
            print(f"{'batched' if batched else 'one at a time':>14}: {seconds:7.2f} s for the step, "
                  f"{tokens:5d} tokens, {tokens / seconds:7.1f} tokens/s")
        ratio = results[False][0] / results[True][0]
        print(f"{'speed-up':>14}: {ratio:.2f}x (target >= {TARGET:.0f}x) {'OK' if ratio >= TARGET else 'MISSED'}")
        state = convert_weight_keys(dict(server.model.state_dict()), server.model)
        size = sum(t.numel() * t.element_size() for t in state.values())
        sync = time_weight_sync(config, model_config, state, args.repeats)
        print(f"{'weight sync':>14}: {sync:7.2f} s for {size / 2**20:.1f} MiB through Ray, "
              f"{sync / results[True][0]:.1%} of the batched step's generation time")


if __name__ == "__main__":
    main()
