"""RL data preparation throughput and memory against verl's example-script way and the disk's floor.

    python benchmarks/convert_throughput.py [--sizes 1000 10000] [--workers 2] [--json results.json]

Three ways over the same image records, each in a fresh process:
- medverl: ``run_prep`` with the default image check (JPEG marker structure, PNG chunk CRCs), rejects, shards,
  manifest; and once more with ``image_check="decode"`` (every pixel decoded) to show what a full decode costs;
- baseline: what verl's ``examples/data_preprocess`` scripts do: ``datasets`` load, ``map`` to the RL layout
  (image bytes read, nothing checked), ``to_parquet``;
- floor: read every input byte (records and images) and write the same bytes to one file.

Each way runs `--repeat` times and the fastest run counts (the disk's write-back makes single runs noisy).
Targets: medverl with 2 workers >= 2x the baseline's records/s, within 3x of the floor's time, and peak memory
that does not grow with the input (< 10% more at the largest size than at the smallest).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from PIL import Image

N_DISTINCT_IMAGES = 400


def make_inputs(root: Path, n: int) -> tuple[Path, Path, int]:
    """`n` RL records referencing real JPEG/PNG files; returns (records file, image root, input bytes)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(N_DISTINCT_IMAGES):
        path = images / (f"img{i:04d}.jpg" if i % 4 else f"img{i:04d}.png")
        if not path.exists():
            size = (rng.randint(256, 640), rng.randint(256, 640))
            noise = Image.effect_noise(size, 40 + i % 30).convert("RGB")
            noise.save(path, quality=88) if path.suffix == ".jpg" else noise.save(path)
    records = root / f"rl_{n}.jsonl"
    with records.open("w") as f:
        for i in range(n):
            f.write(json.dumps({
                "question": f"Case {i}: is there a pleural effusion on this radiograph?",
                "answer": "yes" if i % 2 else "no",
                "query_type": "yes_no",
                "image": f"img{i % N_DISTINCT_IMAGES:04d}.{'jpg' if (i % N_DISTINCT_IMAGES) % 4 else 'png'}",
                "data_source": "bench",
            }) + "\n")
    total = records.stat().st_size + sum(
        (images / json.loads(line)["image"]).stat().st_size for line in records.read_text().splitlines()
    )
    return records, images, total


CHILD = {
    "medverl": """
        from pathlib import Path
        from medverl.data.converters import PrepOptions
        from medverl.data.runner import PrepJob, run_prep
        from medverl.prompts import load_template
        options = PrepOptions(image_root=Path(IMAGES), template=load_template("think_answer"), image_check=CHECK)
        run_prep(PrepJob("rl", (RECORDS,), Path(OUT), options), workers=WORKERS, progress=False)
    """,
    "baseline": """
        import datasets, os
        datasets.disable_progress_bars()
        ds = datasets.load_dataset("json", data_files=RECORDS, cache_dir=os.path.join(OUT, "cache"))["train"]
        def make(example, idx):
            with open(os.path.join(IMAGES, example["image"]), "rb") as f:
                data = f.read()
            return {
                "data_source": example["data_source"],
                "prompt": [{"role": "user", "content": "<image>" + example["question"]}],
                "images": [{"bytes": data, "path": example["image"]}],
                "ability": "medical_vqa",
                "reward_model": {"style": "rule", "ground_truth": example["answer"]},
                "extra_info": {"split": "train", "index": idx, "query_type": example["query_type"]},
            }
        ds = ds.map(make, with_indices=True, remove_columns=ds.column_names)
        ds.to_parquet(os.path.join(OUT, "train.parquet"))
    """,
    "floor": """
        import os, json
        with open(os.path.join(OUT, "floor.bin"), "wb") as out, open(RECORDS, "rb") as records:
            for line in records:
                out.write(line)
                with open(os.path.join(IMAGES, json.loads(line)["image"]), "rb") as f:
                    out.write(f.read())
    """,
}
WRAPPER = """
import json, resource, sys, time
RECORDS, IMAGES, OUT, WORKERS, CHECK = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
start = time.perf_counter()
{body}
seconds = time.perf_counter() - start
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({{"seconds": seconds, "peak_rss_mb": own / 1024, "peak_child_rss_mb": children / 1024}}))
"""


def run(way: str, records: Path, images: Path, workers: int, check: str = "structure") -> dict:
    """One way in a fresh Python process: wall seconds and peak RSS (its own and its workers')."""
    with tempfile.TemporaryDirectory() as out:
        script = WRAPPER.format(body=textwrap.dedent(CHILD[way]))
        done = subprocess.run(
            [sys.executable, "-c", script, str(records), str(images), out, str(workers), check],
            capture_output=True, text=True, check=True,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each way; the fastest counts (default 3)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("| records | way | seconds | records/s | MB/s | peak RSS MB (main + largest worker) |")
        print("|---:|---|---:|---:|---:|---:|")
        for n in args.sizes:
            records, images, total = make_inputs(Path(tmp), n)
            ways = (("floor", 1, ""), ("baseline", 1, ""), ("medverl", 1, "structure"),
                    ("medverl", args.workers, "structure"), ("medverl", args.workers, "decode"))
            for way, workers, check in ways:
                label = f"{way} (workers {workers})" if way == "medverl" else way
                label += " image_check=decode" if check == "decode" else ""
                r = min((run(way, records, images, workers, check or "structure") for _ in range(args.repeat)),
                        key=lambda result: result["seconds"])
                r |= {"records_per_s": n / r["seconds"], "mb_per_s": total / 1e6 / r["seconds"]}
                results[f"{n}/{label}"] = r
                print(f"| {n} | {label} | {r['seconds']:.2f} | {r['records_per_s']:,.0f} | {r['mb_per_s']:.1f} | "
                      f"{r['peak_rss_mb']:.0f} + {r['peak_child_rss_mb']:.0f} |")

    big, small = max(args.sizes), min(args.sizes)
    ours = results[f"{big}/medverl (workers {args.workers})"]
    speedup = ours["records_per_s"] / results[f"{big}/baseline"]["records_per_s"]
    to_floor = ours["seconds"] / results[f"{big}/floor"]["seconds"]
    mem = lambda n: results[f"{n}/medverl (workers {args.workers})"]  # noqa: E731
    growth = (mem(big)["peak_rss_mb"] + mem(big)["peak_child_rss_mb"]) / (
        mem(small)["peak_rss_mb"] + mem(small)["peak_child_rss_mb"]
    ) - 1
    print(f"\nmedverl (workers {args.workers}) vs baseline at {big}: {speedup:.2f}x "
          f"(target >= 2: {'PASS' if speedup >= 2 else 'FAIL'})")
    print(f"medverl (workers {args.workers}) time / floor time at {big}: {to_floor:.2f}x "
          f"(target <= 3: {'PASS' if to_floor <= 3 else 'FAIL'})")
    print(f"peak memory growth {small} -> {big} records: {100 * growth:+.1f}% "
          f"(target < 10%: {'PASS' if growth < 0.10 else 'FAIL'})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
