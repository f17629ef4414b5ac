"""The command line as a user runs it, twice with the same inputs: the first run, then a re-run that
finds every step in the cache, once with the temporary Prefect server the CLI starts when no API is
configured, and once against a server kept running (`make server`, PREFECT_API_URL set).

    .venv/bin/python bench/cli_rerun.py                    # ../shared's YOLOv5n (the demo if absent)
    .venv/bin/python bench/cli_rerun.py --models demo,yolov5n

Each figure is the wall time of the whole `python flows/int8.py ...` process (median of --repeat
cached re-runs). Prints a table and writes bench/results/cli-rerun.json with the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from accuracy import model_args  # noqa: E402
from local_server import start_server  # noqa: E402
from tasks.evaluation.runtime import cpu_info, cpu_label  # noqa: E402

OUT = ROOT / "bench" / "results"


def _cli(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "flows" / "int8.py"), *args], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"flows/int8.py {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return wall


def _argv(base: dict[str, Any]) -> list[str]:
    if base.get("demo"):
        return ["--demo"]
    return [x for k, v in base.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def bench_model(name: str, base: dict[str, Any], work: Path, repeat: int) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(work / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    common = _argv(base) + ["--run-root", str(work / "runs"), "--set", "eval.providers=cpu", "--no-gate"]
    first = _cli(common + ["--run-id", "first"], env)
    temp = [_cli(common + ["--run-id", f"temp-{i}"], env) for i in range(repeat)]

    server, api = start_server(work / "server.log", env)
    try:
        kept = [_cli(common + ["--run-id", f"kept-{i}"], {**env, "PREFECT_API_URL": api}) for i in range(repeat)]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    help_s = statistics.median(_cli(["--help"], env) for _ in range(3))
    summary = json.loads((work / "runs" / f"kept-{repeat - 1}" / "results" / "summary.json").read_text())
    assert all(summary["cached"].values()), summary["cached"]
    t, k = statistics.median(temp), statistics.median(kept)
    return {"first_s": round(first, 2), "cached_temp_server_s": round(t, 2), "cached_kept_server_s": round(k, 2),
            "ratio_temp": round(t / first, 3), "ratio_kept": round(k / first, 3), "cli_help_s": round(help_s, 2),
            "repeat": repeat, "temp_all_s": [round(x, 2) for x in temp], "kept_all_s": [round(x, 2) for x in kept]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="yolov5n")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "tmp" / "bench-cli-rerun")
    a = ap.parse_args()
    result: dict[str, Any] = {"cpu": cpu_label(), "cpu_info": cpu_info(), "cores": os.cpu_count(), "models": {}}
    print(f"{'model':<10} {'first s':>8} {'cached, temp server':>20} {'cached, kept server':>20} {'--help s':>9}")
    for name in [m.strip() for m in a.models.split(",") if m.strip()]:
        base = model_args(name, None)
        if base is None:
            base, name = {"demo": True}, "demo"
        r = bench_model(name, base, a.work / name, a.repeat)
        result["models"][name] = r
        print(f"{name:<10} {r['first_s']:>8.1f} {r['cached_temp_server_s']:>12.1f} ({r['ratio_temp']:.0%}) "
              f"{r['cached_kept_server_s']:>12.1f} ({r['ratio_kept']:.0%}) {r['cli_help_s']:>9.1f}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cli-rerun.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"CPU: {result['cpu']} ({result['cores']} cores); wrote {OUT / 'cli-rerun.json'}")


if __name__ == "__main__":
    main()
