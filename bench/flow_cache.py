"""Wall time of a first INT8 run, a cached re-run, and the flow against the same functions called directly.

    .venv/bin/python bench/flow_cache.py [--demo | --model M --calib-images D --images D --annotations J]

Uses a fresh run root under tmp/bench-flow-cache each time. Prints, and writes to
bench/results/flow-cache.json (--out) with the CPU:
  first run (flow), cached run (flow), their ratio;
  cached run called directly (tasks.pipeline.run_int8) and the flow's orchestration overhead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.common import offline_defaults  # noqa: E402

offline_defaults()

from tasks.config import RunConfig  # noqa: E402
from tasks.evaluation.runtime import cpu_label  # noqa: E402
from tasks.pipeline import run_int8  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--calib-images")
    ap.add_argument("--images")
    ap.add_argument("--annotations")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "flow-cache.json")
    a = ap.parse_args()
    root = ROOT / "tmp" / "bench-flow-cache"
    shutil.rmtree(root, ignore_errors=True)
    base = {"run_root": str(root), "eval": {"providers": ["cpu"]}}
    if a.model:
        base.update(model=a.model, calib_images=a.calib_images, images=a.images, annotations=a.annotations)
    else:
        base.update(demo=True)

    from prefect.testing.utilities import prefect_test_harness

    from flows.int8_flow import int8_flow

    # cached runs are short, so one slow moment of a shared machine moves them a lot: median of 3
    with prefect_test_harness(server_startup_timeout=120):
        times: dict[str, list[float]] = {"first": [], "cached": []}
        for name in ("first", "cached", "cached", "cached"):
            cfg = RunConfig.model_validate({**base, "run_id": f"flow-{name}-{len(times[name])}"})
            t0 = time.perf_counter()
            s = int8_flow(config=cfg)
            times[name].append(time.perf_counter() - t0)
            print(f"{name:>7} run (flow): {times[name][-1]:7.2f} s  cached={s['cached']}")
    direct = []
    for i in range(3):
        cfg = RunConfig.model_validate({**base, "run_id": f"direct-cached-{i}"})
        t0 = time.perf_counter()
        s = run_int8(cfg)
        direct.append(time.perf_counter() - t0)
    print(f" cached run (direct functions): {statistics.median(direct):7.2f} s (median of 3)  cached={s['cached']}")
    first, cached = times["first"][0], statistics.median(times["cached"])
    print(f"cached / first = {cached / first * 100:.1f}% (median cached flow run {cached:.2f} s)")
    print(f"flow orchestration overhead (cached flow - cached direct) = {cached - statistics.median(direct):.2f} s")
    a.out.write_text(json.dumps({
        "cpu": cpu_label(), "model": a.model or "demo", "first_flow_s": round(first, 2),
        "cached_flow_s": [round(x, 2) for x in times["cached"]], "cached_flow_median_s": round(cached, 2),
        "cached_direct_median_s": round(statistics.median(direct), 2), "cached_over_first": round(cached / first, 4),
        "overhead_s": round(cached - statistics.median(direct), 2)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
