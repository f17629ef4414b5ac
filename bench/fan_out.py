"""Work spread over worker processes (issue #14): wall-time ratios of 2 workers against 1.

    .venv/bin/python bench/fan_out.py                  # both parts
    .venv/bin/python bench/fan_out.py --part eval      # or: --part sweep

1. Sharded evaluation: the same 79-image COCO evaluation of ../shared's FP32 YOLOv10s (the demo's if
   absent), its shards evaluated by a Dask LocalCluster of 1 and then 2 single-threaded worker
   processes (1 ORT thread each), merged and scored once; mAP checked equal.
2. A two-model sweep through Prefect as users run it: a real `prefect server`, the pools, `prefect
   deploy --all`, then a yolo-sweep of ../shared's YOLOv5n and the demo (tensorrt target, each child a
   yolo-int8 run with a fresh cache) with 1 worker and then 2 workers on the pool: from trigger to
   Completed.

Prints both and writes bench/results/fan-out.json with the CPU. On 2 cores the ideal is ~0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from accuracy import DATA, SHARED_MODELS  # noqa: E402
from local_server import free_port, start_server  # noqa: E402
from tasks.evaluation.evaluate import EvalSettings, detect_shard, score_shards, shard_bounds  # noqa: E402
from tasks.evaluation.runtime import cpu_info, cpu_label  # noqa: E402
from tasks.evaluation.sources.base import DataSpec  # noqa: E402

OUT = ROOT / "bench" / "results"


def bench_eval(work: Path) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    model = SHARED_MODELS["yolov10s"]
    if model.exists():
        images, ann = DATA["mini"]["images"], DATA["mini"]["annotations"]
    else:
        from tasks.config import load_demo_config

        demo = load_demo_config()
        model, images, ann = demo["model"], demo["paths"]["images"], demo["paths"]["annotations"]
    settings = EvalSettings(providers=["cpu"], warmup=2)
    from tasks.evaluation.coco_eval import load_coco

    n = len(load_coco(ann).getImgIds())
    out: dict[str, Any] = {"model": str(model), "images": n, "ort_threads_per_worker": 1}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
                Client(cl) as client:
            client.run(lambda: None)  # workers up before the clock starts
            t0 = time.perf_counter()
            futs = [client.submit(detect_shard, model, DataSpec(images, ann), None, settings, 0, b, 1, pure=False)
                    for b in shard_bounds(n, workers)]
            parts = client.gather(futs)
            metrics = score_shards(model, DataSpec(images, ann), None, settings, 0, parts)
            wall = time.perf_counter() - t0
        out[f"workers_{workers}"] = {"wall_s": round(wall, 2), "map50_95": metrics["map50_95"], "shards": len(parts)}
        print(f"  evaluation, {workers} worker(s): {wall:.1f} s, mAP50-95 {metrics['map50_95']:.4f}")
    out["ratio"] = round(out["workers_2"]["wall_s"] / out["workers_1"]["wall_s"], 3)
    out["map_equal"] = out["workers_2"]["map50_95"] == out["workers_1"]["map50_95"]
    return out


def _api(method: str, url: str, **kw: Any) -> httpx.Response:
    for attempt in range(15):
        try:
            r = httpx.request(method, url, timeout=15, **kw)
            if r.status_code < 500:
                r.raise_for_status()
                return r
        except httpx.TransportError:
            pass
        time.sleep(min(0.5 * (attempt + 1), 3))
    r.raise_for_status()
    return r


def bench_sweep(work: Path, threads: int | None) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(work / "home"), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1")
    prefect = [sys.executable, "-m", "prefect"]
    procs: list[subprocess.Popen] = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        p = subprocess.Popen(prefect + args, cwd=ROOT, env=env, stdout=open(work / f"{name}.log", "w"),
                             stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    def stop(ps: list[subprocess.Popen]) -> None:
        for p in ps:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)

    ev = {"providers": ["cpu"], **({"threads": threads} if threads else {})}
    children = [{"name": "yolov5n", "config": {"model": str(SHARED_MODELS["yolov5n"]),
                                               **{k: str(v) for k, v in REAL.items()}, "max_map_drop": None,
                                               "eval": ev}},
                {"name": "demo", "config": {"demo": True, "max_map_drop": None, "eval": ev}}]
    if not SHARED_MODELS["yolov5n"].exists():
        children[0] = {"name": "demo-ort-cpu", "config": {"demo": True, "targets": ["ort-cpu"], "max_map_drop": None}}
    out: dict[str, Any] = {"children": [c["name"] for c in children],
                           "evaluation_threads": threads or "ORT default (every core)"}
    try:
        server, api = start_server(work / "server.log", env, port)
        procs.append(server)
        for args in (["work-pool", "create", "yolo-lowbit", "--type", "process", "--overwrite"],
                     ["work-pool", "create", "yolo-lowbit-sweeps", "--type", "process", "--overwrite"],
                     ["--no-prompt", "deploy", "--all"]):
            subprocess.run(prefect + args, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
        start(["worker", "start", "--pool", "yolo-lowbit-sweeps"], "sweep-worker")
        dep = _api("GET", f"{api}/deployments/name/yolo-sweep/demo-sweep").json()
        for workers in (1, 2):
            pool_workers = [start(["worker", "start", "--pool", "yolo-lowbit", "--limit", "1", "--name", f"w{i}"],
                                  f"worker{workers}-{i}") for i in range(workers)]
            time.sleep(5)  # the workers have polled the pool once
            sweep = {"deployment": "yolo-int8/demo-int8", "run_root": str(work / f"runs-{workers}"),
                     "children": children}
            t0 = time.perf_counter()
            run_id = _api("POST", f"{api}/deployments/{dep['id']}/create_flow_run",
                          json={"parameters": {"sweep": sweep}}).json()["id"]
            while True:
                fr = _api("GET", f"{api}/flow_runs/{run_id}").json()
                if fr["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                    break
                time.sleep(0.5)
            wall = time.perf_counter() - t0
            assert fr["state"]["type"] == "COMPLETED", (work / f"worker{workers}-0.log").read_text()[-3000:]
            out[f"workers_{workers}"] = {"wall_s": round(wall, 1)}
            print(f"  sweep of {len(children)} models, {workers} worker(s): {wall:.1f} s")
            stop(pool_workers)
        out["ratio"] = round(out["workers_2"]["wall_s"] / out["workers_1"]["wall_s"], 3)
    finally:
        stop(list(reversed(procs)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["eval", "sweep", "all"], default="all")
    ap.add_argument("--work", type=Path, default=ROOT / "tmp" / "bench-distributed")
    a = ap.parse_args()
    result: dict[str, Any] = {"cpu": cpu_label(), "cpu_info": cpu_info(), "cores": os.cpu_count()}
    if a.part in ("eval", "all"):
        print("sharded evaluation (Dask LocalCluster):")
        result["evaluation"] = bench_eval(a.work / "eval")
        print(f"  2 workers / 1 worker: x{result['evaluation']['ratio']:.2f}")
    if a.part in ("sweep", "all"):
        for threads, name in ((None, "sweep"), (1, "sweep_1_thread")):
            print(f"sweep through Prefect (server, pools, process workers), evaluation threads: {threads or 'all'}:")
            result[name] = bench_sweep(a.work / name, threads)
            print(f"  2 workers / 1 worker: x{result[name]['ratio']:.2f}")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"fan-out{'' if a.part == 'all' else '-' + a.part}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"CPU: {result['cpu']} ({result['cores']} cores); wrote {path}")


if __name__ == "__main__":
    main()
