"""Data quality scoring throughput: the `rules` scorer on image-caption records, and the `judge` client against a
loopback server that answers after a fixed delay.

    python benchmarks/qc_throughput.py [--records 10000] [--delay 0.2] [--concurrency 8 32] [--judge-records 400]

For the judge, the limit is the endpoint: with `c` calls in flight and a reply taking `d` seconds, no client can do
better than c / d records per second; the ratio printed is the client's records/s against that bound, measured in
the same run (1.0 means the client adds nothing).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from medverl.http import JudgeConfig
from medverl.qc.job import QCJob, run_qc

CAPTIONS = [
    "Findings: the lungs are clear, no pleural effusion. Impression: normal chest radiograph.",
    "Axial CT of the abdomen: a 2 cm hypodense lesion in segment VII of the liver, likely a cyst.",
    "Fundus photograph: sharp optic disc margins, no haemorrhages or exudates.",
    "the the the the the the the the the the the",
]


def make_records(root: Path, n: int) -> Path:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(100):
        size = (rng.randint(200, 512), rng.randint(200, 512))
        Image.effect_noise(size, 20 + i % 40).convert("L" if i % 2 else "RGB").save(images / f"img{i:03d}.png")
    path = root / f"captions_{n}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"image": f"img{i % 100:03d}.png", "text": f"{CAPTIONS[i % len(CAPTIONS)]} Case {i}.",
                                "data_source": f"set{i % 5}"}) + "\n")
    return path


def serve(delay: float) -> ThreadingHTTPServer:
    reply = json.dumps({"choices": [{"message": {"content": json.dumps(
        {"medical_correctness": 4, "fluency": 4, "relevance": 4, "completeness": 3, "practicality": 4,
         "rationale": "ok"})}}]}).encode()  # every record differs: no cache hits

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # one segment per reply: headers and body written apart meet delayed ACKs (+40 ms) on keep-alive
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--judge-records", type=int, default=400)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds the loopback judge takes per reply")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        records = make_records(root, args.records)
        start = time.perf_counter()
        run_qc(QCJob("caption", (str(records),), root / "rules", image_root=str(root / "images")), progress=False)
        seconds = time.perf_counter() - start
        print("| scorer | records | concurrency | seconds | records/s | bound records/s | ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        print(f"| rules | {args.records} | 1 process | {seconds:.2f} | {args.records / seconds:,.0f} | - | - |")
        judge_records = make_records(root / "judge", args.judge_records)
        server = serve(args.delay)
        url = f"http://127.0.0.1:{server.server_port}/v1"
        for concurrency in args.concurrency:
            config = JudgeConfig(url, "bench", concurrency=concurrency)
            out = root / f"judge_{concurrency}"
            start = time.perf_counter()
            run_qc(QCJob("caption", (str(judge_records),), out, "judge", str(root / "judge" / "images"), judge=config),
                   progress=False)
            seconds = time.perf_counter() - start
            rate, bound = args.judge_records / seconds, concurrency / args.delay
            print(f"| judge | {args.judge_records} | {concurrency} | {seconds:.2f} | {rate:,.0f} | {bound:,.0f} | "
                  f"{rate / bound:.2f} |")
        server.shutdown()


if __name__ == "__main__":
    main()
