"""How much the verdict's images tell: interval widths on 79 and 300 images, the bootstrap's cost, and
auto mode judged on images it did not choose on (issue #21's figures).

    .venv/bin/python bench/verdicts.py                                   # YOLOv10s and YOLOv5n, both sets
    .venv/bin/python bench/verdicts.py --models yolov5n --sets 300 --no-auto
    .venv/bin/python bench/verdicts.py --extra name=/path/model.onnx      # any other real COCO detector

Plain runs: every target (tensorrt, ort-cpu, openvino) on the 79 images of ../shared's
coco-val2017-mini and on the 300 of coco-val2017-300, calibrated on 32 images of coco-calib-512
(disjoint from both); one cache per model, so the second set reuses the builds. For each target: the
mAP50-95 delta, its 95% paired bootstrap interval and width, and the bootstrap's wall time as a share
of the evaluations'. Auto mode (`--accuracy-budget`, default 0.5) on the 300 images with the default
choice of selection images (no other annotated images there: a seeded half to choose on, the other
half reported): what it chose, on which images, the delta it expected with its interval and the
delta the held-out images show. The flow's steps are called directly (run_int8). Prints a table and
writes bench/results/verdicts.json with the CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared_data import SHARED  # noqa: E402
from tasks.config import RunConfig  # noqa: E402
from tasks.evaluation.runtime import cpu_info, cpu_label  # noqa: E402
from tasks.pipeline import run_int8  # noqa: E402
from tasks.targets.table import target  # noqa: E402

OUT = ROOT / "bench" / "results"
SETS = {"79": SHARED / "data/coco-val2017-mini", "300": SHARED / "data/coco-val2017-300"}
CALIB = SHARED / "data/coco-calib-512/images"
MODELS = {"yolov10s": SHARED / "models/yolov10s-coco/yolov10s.onnx", "yolov5n": SHARED / "models/yolov5n-coco/yolov5n.onnx"}
TARGETS = ["tensorrt", "ort-cpu", "openvino"]


def _cfg(model: Path, data: Path, root: Path, run_id: str, **kw: Any) -> RunConfig:
    return RunConfig.model_validate({
        "model": str(model), "calib_images": str(CALIB), "images": str(data / "images"),
        "annotations": str(data / "annotations/instances_val2017.json"), "targets": TARGETS,
        "run_root": str(root), "run_id": run_id, "max_map_drop": None, "eval": {"providers": ["cpu"]}, **kw})


def _bootstrap_share(run_dir: Path, summary: dict[str, Any]) -> dict[str, float]:
    """Bootstrap seconds over evaluation seconds, summed over the run's evaluations."""
    boot = wall = 0.0
    for which in ["fp32"] + [target(t).which for t in summary.get("targets", {summary["quantization"]["target"]: 0})]:
        m = json.loads((run_dir / f"{which}-coco" / "metrics.json").read_text())
        if m.get("bootstrap") and m.get("eval_wall_s"):  # recorded by the evaluation itself, cached or not
            boot += m["bootstrap"]["wall_s"]
            wall += m["eval_wall_s"]
    return {"bootstrap_s": round(boot, 2), "evaluations_s": round(wall, 2),
            "share": round(boot / wall, 4) if wall else None}


def plain(name: str, model: Path, root: Path, sets: list[str]) -> dict[str, Any]:
    out = {}
    for st in sets:
        t0 = time.perf_counter()
        s = run_int8(_cfg(model, SETS[st], root, f"plain-{st}-{time.strftime('%H%M%S')}"))
        row = {"images": s["fp32"]["images"], "fp32": s["fp32"]["map50_95"], "wall_s": round(time.perf_counter() - t0, 1),
               "bootstrap": _bootstrap_share(Path(s["run_dir"]), s), "targets": {}}
        for t, r in s["targets"].items():
            d = r["delta"]
            ci = d["map50_95_ci"]
            row["targets"][t] = {"delta_pt": round(d["map50_95"] * 100, 2), "ci_pt": [round(x * 100, 2) for x in ci],
                                 "width_pt": round((ci[1] - ci[0]) * 100, 2),
                                 "mac_share": r["quantization"].get("int8_conv_mac_share")}
        out[st] = row
        print(f"{name} on {st}: FP32 {row['fp32']:.4f}, " + ", ".join(
            f"{t} {v['delta_pt']:+.2f} [{v['ci_pt'][0]:+.2f}, {v['ci_pt'][1]:+.2f}] (width {v['width_pt']:.2f})"
            for t, v in row["targets"].items()) + f"; bootstrap {row['bootstrap']}", flush=True)
    return out


def auto(name: str, model: Path, root: Path, budget: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    s = run_int8(_cfg(model, SETS["300"], root, f"auto-{time.strftime('%H%M%S')}", accuracy_budget=budget))
    out = {"wall_s": round(time.perf_counter() - t0, 1), "budget": budget, "targets": {}}
    for t, r in s["targets"].items():
        g = r["accuracy_guard"]
        out["targets"][t] = {
            "chosen": g["chosen"]["name"], "float_layers": g["float_layers"], "met": g["met"],
            "mac_share": g["int8_conv_mac_share"], "chosen_on": g["selection"],
            "expected_pt": round(g["expected"]["map50_95"] * 100, 2),
            "expected_ci_pt": [round(x * 100, 2) for x in g["expected"]["map50_95_ci"]],
            "reported_pt": round(g["reported"]["map50_95"] * 100, 2),
            "reported_ci_pt": [round(x * 100, 2) for x in g["reported"]["map50_95_ci"]],
            "reported_within_expected_interval": g["reported_within_expected_interval"],
            "candidates": len(g["candidates"]), "guard_wall_s": g["wall_s"]}
        v = out["targets"][t]
        print(f"{name} auto {t}: chose {v['chosen']} ({len(v['float_layers'])} layers float, "
              f"{(v['mac_share'] or 0) * 100:.1f}% MACs INT8) on {g['selection']['count']} images ({g['selection']['how']}); "
              f"expected {v['expected_pt']:+.2f} {v['expected_ci_pt']}, reported {v['reported_pt']:+.2f} "
              f"{v['reported_ci_pt']} on {s['fp32']['images']} others: inside={v['reported_within_expected_interval']}",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="yolov10s,yolov5n")
    ap.add_argument("--extra", action="append", default=[], help="NAME=PATH of another real COCO detector")
    ap.add_argument("--sets", default="79,300")
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--no-auto", action="store_true")
    ap.add_argument("--root", type=Path, default=ROOT / "tmp" / "bench-verdicts")
    ap.add_argument("--fresh", action="store_true", help="start from empty caches")
    args = ap.parse_args()
    models = {m: MODELS[m] for m in args.models.split(",") if m}
    models.update(dict(e.split("=", 1) for e in args.extra))
    res: dict[str, Any] = {"cpu": cpu_info(), "cpu_label": cpu_label(), "calibration": str(CALIB), "models": {}}
    for name, path in models.items():
        if not Path(path).exists():
            print(f"skipped {name}: {path} is absent")
            continue
        root = args.root / name
        if args.fresh:
            shutil.rmtree(root, ignore_errors=True)
        res["models"][name] = {"plain": plain(name, Path(path), root, args.sets.split(","))}
        if not args.no_auto:
            res["models"][name]["auto"] = auto(name, Path(path), root, args.budget)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "verdicts.json").write_text(json.dumps(res, indent=1))
    print(f"CPU: {res['cpu_label']}\nwrote {OUT / 'verdicts.json'}")


if __name__ == "__main__":
    main()
