"""Load on the served champion: `mlflow models serve` over loopback, bounded clients and requests.

    python bench/serve_load.py [--flag pneumoniamnist] [--clients 8] [--requests 400] [--batch 1]

Needs a registered champion (run `make run` first). Starts the model server on 127.0.0.1
on a free port, checks one answer against the in-process model, then sends --requests
requests of --batch test images from --clients concurrent clients (each waits for its answer
before sending the next) and stops. Prints throughput, p50/p99 latency, errors and dropped
(unanswered) requests, and the same figures for calling the in-process model serially, as
the baseline. Zero errors and zero dropped requests are expected.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np

from medops import paths
from medops.cluster import free_port


def post(url: str, body: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0  # no answer: dropped
    return time.perf_counter() - started, status


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flag", default="pneumoniamnist")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="model server worker processes")
    args = parser.parse_args()

    tracking_uri = f"sqlite:///{Path('mlruns/mlflow.db').resolve()}"
    uri = f"models:/{args.flag}-classifier@champion"
    images = np.load(paths.raw_file(args.flag))["test_images"]
    batches = [images[(i * args.batch) % len(images):][:args.batch] for i in range(args.requests)]
    batches = [b if len(b) == args.batch else images[:args.batch] for b in batches]
    bodies = [json.dumps({"inputs": b.tolist()}).encode() for b in batches]

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(uri)
    started = time.perf_counter()
    local = []
    for b in batches:
        t = time.perf_counter()
        model.predict(b)
        local.append(time.perf_counter() - t)
    local_seconds = time.perf_counter() - started

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", str(args.workers)],
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,  # the server runs uvicorn from this env
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    sys.exit(f"model server did not start (exit code {server.poll()})")
                time.sleep(1)
        url = f"http://127.0.0.1:{port}/invocations"
        with urllib.request.urlopen(urllib.request.Request(url, data=bodies[0], headers={
                "Content-Type": "application/json"})) as response:
            served = json.loads(response.read())["predictions"]
        expected = model.predict(batches[0])
        assert [r["label"] for r in served] == list(expected["label"]), "served answer differs from the model"

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda body: post(url, body), bodies))
        seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(30)

    latencies = [t for t, status in results if status == 200]
    errors = sum(1 for _, status in results if status not in (0, 200))
    dropped = sum(1 for _, status in results if status == 0)
    print(f"{uri}: {args.requests} requests of {args.batch} image(s), {args.clients} clients, "
          f"{args.workers} server workers")
    print(f"served:     {len(latencies) / seconds:7.1f} req/s  p50 {percentile(latencies, 50) * 1000:6.1f} ms  "
          f"p99 {percentile(latencies, 99) * 1000:6.1f} ms  errors {errors}  dropped {dropped}")
    print(f"in-process: {len(local) / local_seconds:7.1f} req/s  p50 {statistics.median(local) * 1000:6.1f} ms  "
          f"p99 {percentile(local, 99) * 1000:6.1f} ms  (serial, the baseline)")
    print(f"served / in-process throughput: {len(latencies) / seconds / (len(local) / local_seconds):.2f}")
    if errors or dropped:
        sys.exit(1)


if __name__ == "__main__":
    main()
