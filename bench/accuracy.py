"""INT8 accuracy on real detectors, plain and in auto mode, for every target (issue #13's figures).

    .venv/bin/python bench/accuracy.py                          # demo + ../shared's YOLOv10s and YOLOv5n
    .venv/bin/python bench/accuracy.py --models yolov10s --budget 0.5
    .venv/bin/python bench/accuracy.py --extra yolov8n=/path/yolov8n.onnx   # a model the defaults never saw

    .venv/bin/python bench/accuracy.py --models yolov5n --variants plain,no-head  # recovery ablation
    .venv/bin/python bench/accuracy.py --out bench/results/accuracy-ablation-300.json --effects  # paired effects

For each model, two runs with their own fresh cache, side by side: the plain command (defaults, no
budget) and auto mode (`--accuracy-budget`), both with every target, the flow's steps called
directly (bench/flow_cache.py measures the Prefect overhead apart). Real models calibrate on
`--calib-count` images of ../shared/data/coco-calib-512 and are evaluated on the 300 of
coco-val2017-300 (`--data mini`: 32 of coco-val2017-calib, the 79 of coco-val2017-mini).
`--variants` runs the plain command with one recovery rule toggled each instead of auto mode; `--effects`
prints each one's paired effect against the defaults (same resampled images), per model and pooled.
Prints a table and writes bench/results/accuracy.json: per target the mAP50-95 delta with its 95%
interval, the share of convolution MACs in INT8, what auto mode chose, and the wall time of each
run with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared_data import SHARED  # noqa: E402
from targets import nncf_openvino_peer  # noqa: E402  (bench/targets.py: the recipe, not a copy of it)
from tasks.config import RunConfig, load_demo_config  # noqa: E402
from tasks.evaluation.bootstrap import paired_interval  # noqa: E402
from tasks.evaluation.evaluate import EvalSettings, evaluate_model  # noqa: E402
from tasks.evaluation.runtime import cpu_info, cpu_label  # noqa: E402
from tasks.pipeline import run_int8  # noqa: E402
from tasks.steps.report import per_target  # noqa: E402
from tasks.targets.table import target as target_of  # noqa: E402

OUT = ROOT / "bench" / "results"
DATA = {
    "300": {"calib_images": SHARED / "data/coco-calib-512/images", "images": SHARED / "data/coco-val2017-300/images",
            "annotations": SHARED / "data/coco-val2017-300/annotations/instances_val2017.json"},
    "mini": {"calib_images": SHARED / "data/coco-val2017-calib/images", "images": SHARED / "data/coco-val2017-mini/images",
             "annotations": SHARED / "data/coco-val2017-mini/annotations/instances_val2017.json"}}
TARGETS = ["tensorrt", "ort-cpu", "openvino"]
# the recovery rule toggled against the defaults (tasks/config.py RecoverySettings): the head rule off. The
# two rules 300 images did not confirm (bias correction, the NSR rule) left the product; their figures are
# in bench/results/accuracy-ablation-300.json and docs/accuracy.md.
VARIANTS: dict[str, dict[str, Any]] = {"plain": {}, "no-head": {"recovery": {"head_float": False}},
                                       "reconstruct": {"reconstruction": {"mode": "on"}}}
SHARED_MODELS = {"yolov10s": SHARED / "models/yolov10s-coco/yolov10s.onnx",
                 "yolov5n": SHARED / "models/yolov5n-coco/yolov5n.onnx"}


def model_args(name: str, path: Path | None, data: str = "300") -> dict[str, Any] | None:
    if name == "demo":
        return {"demo": True}
    p = path or SHARED_MODELS.get(name)
    if p is None or not Path(p).exists():
        print(f"skipped {name}: {p} is absent")
        return None
    return {"model": str(p), **{k: str(v) for k, v in DATA[data].items()}}


def one_run(base: dict[str, Any], root: Path, budget: float | None, threads: int | None,
            calib_count: int | None = None, variant: dict[str, Any] | None = None,
            fresh: bool = True, run_id: str = "run", targets: list[str] | None = None) -> dict[str, Any]:
    if fresh:
        shutil.rmtree(root, ignore_errors=True)  # a fresh cache: the wall time counts every candidate
    extra = {"calib_count": calib_count} if calib_count and not base.get("demo") else {}
    cfg = RunConfig.model_validate({**base, **extra, **(variant or {}), "targets": targets or TARGETS, "run_root": str(root),
                                    "run_id": run_id, "max_map_drop": None, "accuracy_budget": budget,
                                    "eval": {"providers": ["cpu"], **({"threads": threads} if threads else {})}})
    t0 = time.perf_counter()
    s = run_int8(cfg)
    wall = time.perf_counter() - t0
    out = {"wall_s": round(wall, 1), "fp32_map50_95": s["fp32"]["map50_95"], "calib_count": s["calibration"]["count"],
           "run_dir": s["run_dir"], "targets": {}}
    for name, t in per_target(s).items():
        q, g = t["quantization"], t.get("accuracy_guard")
        out["targets"][name] = {
            "map50_95": t["int8"]["map50_95"], "drop_points": round(-t["delta"]["map50_95"] * 100, 3),
            "delta_ci_pt": [round(x * 100, 2) for x in t["delta"]["map50_95_ci"]] if t["delta"].get("map50_95_ci") else None,
            "map50_drop_points": round(-t["delta"]["map50"] * 100, 3), "latency_ratio": t["delta"]["latency_ratio"],
            "int8_conv_mac_share": q["int8_conv_mac_share"], "int8_convs": q["int8_convs"],
            "float_layers": q["recovery"]["float_layers"],
            "bias_correction": bool(q["recovery"].get("bias_correction")),
            "reconstruction": q.get("reconstruction"),
            "guard": None if g is None else {"met": g["met"], "chosen": g["chosen"]["name"],
                                             "candidates": len(g["candidates"]), "float_layers": g["float_layers"],
                                             "wall_s": g["wall_s"]}}
    return out


def replicates(run_dir: str | Path, target: str) -> dict[str, Any]:
    """The INT8 evaluation's bootstrap record (mAP50-95 of each seeded resample of the images)."""
    return json.loads((Path(run_dir) / f"{target_of(target).which}-coco" / "metrics.json").read_text())["bootstrap"]


def rule_effects(variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each variant against the plain run, per target: variant minus plain in points with its paired 95%
    interval (the same resamples score both: the noise the two models share cancels)."""
    out: dict[str, dict[str, Any]] = {}
    plain = variants["plain"]
    for v, r in variants.items():
        if v == "plain":
            continue
        for t in r["targets"]:
            a, b = replicates(plain["run_dir"], t), replicates(r["run_dir"], t)
            if a == b:  # the rule does not touch this target (openvino is not reconstructed)
                continue
            ci = paired_interval(a, b, "map50_95")
            if ci is None:  # other images, seed or count: no paired difference, and none to pool
                raise SystemExit(f"{v} / {t}: its evaluation was not resampled like the plain run's "
                                 f"({r['run_dir']} vs {plain['run_dir']}); run the variants again together")
            out.setdefault(v, {})[t] = {
                "effect_pt": round((r["targets"][t]["map50_95"] - plain["targets"][t]["map50_95"]) * 100, 3),
                "ci_pt": [round(x * 100, 2) for x in ci],
                # kept in the results file: run folders under tmp/ do not outlive a checkout, and pooling needs them
                "diff": [round(float(x), 4) for x in (np.asarray(b["map50_95"]) - np.asarray(a["map50_95"])) * 100]}
    return out


def recipe_row(base: dict[str, Any], plain_run_dir: str | Path, work: Path) -> dict[str, Any]:
    """The NNCF + OpenVINO recipe Ultralytics users run (bench/targets.py nncf_openvino_peer: NNCF's
    defaults, MIXED preset, the head's arithmetic and Sigmoids ignored) on the plain run's own
    calibration images, evaluated on its images: its delta against FP32, and the `openvino` target
    minus the recipe, both with paired intervals (same resamples)."""
    run = Path(plain_run_dir)
    cfg = json.loads((run / "run-config.json").read_text())
    cal = json.loads((run / "quantize-int8" / "calibration.json").read_text())
    files = [Path(cal["folder"]) / f for f in cal["images"]]
    model = Path(cfg["model"])
    shape = json.loads((run / "results" / "summary.json").read_text())["model"]["input_shape"]
    work.mkdir(parents=True, exist_ok=True)
    xml = work / f"{model.stem}-recipe.xml"
    built = nncf_openvino_peer(model, files, tuple(shape), xml)
    st = EvalSettings.model_validate({**cfg["eval"], "runtime": "openvino", "deployed_runs": 0})
    m = evaluate_model(xml, Path(cfg["images"]), Path(cfg["annotations"]), cfg["subset"], st, cfg["subset_seed"],
                       io_model=model)
    fp = json.loads((run / "fp32-coco" / "metrics.json").read_text())
    ov = json.loads((run / "int8-openvino-coco" / "metrics.json").read_text())
    ci = paired_interval(fp["bootstrap"], m["bootstrap"], "map50_95")
    ci_t = paired_interval(m["bootstrap"], ov["bootstrap"], "map50_95")
    return {"built": built, "calibration_images": len(files), "map50_95": m["map50_95"],
            "delta_pt": round((m["map50_95"] - fp["map50_95"]) * 100, 3),
            "delta_ci_pt": [round(c * 100, 2) for c in ci] if ci else None,
            "openvino_minus_recipe_pt": round((ov["map50_95"] - m["map50_95"]) * 100, 3),
            "openvino_minus_recipe_ci_pt": [round(c * 100, 2) for c in ci_t] if ci_t else None}


def pooled(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean effect over models and targets, its interval from the per-resample mean of the paired
    differences (each model's images resampled on their own: independent estimates averaged)."""
    d = np.mean([c["diff"] for c in cells], axis=0)
    lo, hi = np.quantile(d, [0.025, 0.975])
    return {"effect_pt": round(float(np.mean([c["effect_pt"] for c in cells])), 3),
            "ci_pt": [round(float(lo), 2), round(float(hi), 2)], "cells": len(cells)}


def effects_table(results: dict[str, Any]) -> str:
    """Each rule's effect (variant minus the defaults) per model and target, and pooled over them."""
    lines = ["| variant | model | " + " | ".join(f"`{t}`" for t in TARGETS) + " |", "|---|---|" + "---:|" * len(TARGETS)]
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for name, r in results["models"].items():
        if "variants" not in r:
            continue
        for v, per_t in (r.get("effects") or rule_effects(r["variants"])).items():
            by_variant.setdefault(v, []).extend(per_t.values())
            lines.append(f"| {v} | {name} | " + " | ".join(
                f"{c['effect_pt']:+.2f} [{c['ci_pt'][0]:+.2f}, {c['ci_pt'][1]:+.2f}]" if (c := per_t.get(t)) else ""
                for t in TARGETS) + " |")
    lines.append("")
    for v, cells in by_variant.items():
        p = pooled(cells)
        lines.append(f"- pooled `{v}`: {p['effect_pt']:+.2f} [{p['ci_pt'][0]:+.2f}, {p['ci_pt'][1]:+.2f}] over {p['cells']} model x target cells")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The README's table: per model and target, the plain run beside auto mode."""
    def cell(v: dict[str, Any]) -> str:
        ci = v["delta_ci_pt"]
        return f"{-v['drop_points']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")

    lines = ["| model | target | plain: delta pt [95% CI] | MACs INT8 | auto chose | auto: delta pt on the reported images | MACs INT8 | wall plain / auto |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for name, r in results["models"].items():
        if "plain" not in r:
            continue
        for i, (t, v) in enumerate(r["plain"]["targets"].items()):
            a = r["auto"]["targets"][t]
            g = a["guard"]
            wall = f"{r['plain']['wall_s']:.0f} s / {r['auto']['wall_s']:.0f} s (x{r['auto_over_plain_wall']})" if i == 0 else ""
            lines.append(f"| {name if i == 0 else ''} | `{t}` | {cell(v)} | {v['int8_conv_mac_share'] * 100:.1f}% | "
                         f"{g['chosen']}{'' if g['met'] else ' (not met)'} | {cell(a)} | {a['int8_conv_mac_share'] * 100:.1f}% | {wall} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,yolov10s,yolov5n")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=PATH", help="another real COCO detector")
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--calib-counts", help="plain runs only, one per calibration count (e.g. 32,64,80): "
                                           "accuracy and wall time against the sample count")
    ap.add_argument("--data", choices=sorted(DATA), default="300")
    ap.add_argument("--calib-count", type=int, help="calibration images (default: the run's own default)")
    ap.add_argument("--variants", help="plain runs with one recovery rule toggled each, instead of auto mode: "
                                       + ",".join(VARIANTS))
    ap.add_argument("--targets", help="with --variants: the targets to run (a "
                    "reconstruction of YOLOv10s on both Q/DQ targets is hours on 2 cores)")
    ap.add_argument("--recipe", action="store_true", help="with --variants: also the NNCF + OpenVINO recipe "
                                                          "Ultralytics users run, beside the openvino target")
    ap.add_argument("--out", type=Path, default=OUT / "accuracy.json")
    ap.add_argument("--table", action="store_true", help="print --out (plain and auto runs) as the README's table")
    ap.add_argument("--effects", action="store_true", help="print --out (a --variants run) as each rule's paired "
                                                          "effect against the defaults, per model and pooled")
    a = ap.parse_args()
    if a.table:
        print(markdown(json.loads(a.out.read_text())))
        return
    if a.effects:
        print(effects_table(json.loads(a.out.read_text())))
        return
    if a.variants and (bad := [v for v in a.variants.split(",") if v not in VARIANTS]):
        ap.error(f"--variants: unknown {', '.join(bad)}; choose from {', '.join(VARIANTS)}")  # before any run
    if (a.targets or a.recipe) and not a.variants:  # the plain + auto comparison always runs every target
        ap.error("--targets and --recipe go with --variants (e.g. --variants plain,reconstruct)")
    targets = (a.targets or ",".join(TARGETS)).split(",")
    if bad := [t for t in targets if t not in TARGETS]:
        ap.error(f"--targets: unknown {', '.join(bad)}; choose from {', '.join(TARGETS)}")
    if a.recipe and "openvino" not in targets:
        ap.error("--recipe compares with the openvino target: add openvino to --targets")
    todo = [(n, None) for n in a.models.split(",") if n] + [(e.split("=", 1)[0], Path(e.split("=", 1)[1]))
                                                            for e in a.extra]
    if any(n == "demo" for n, _ in todo):
        load_demo_config()  # generates the demo's data before any timing
    results: dict[str, Any] = {"cpu": cpu_label(), "cpu_info": cpu_info(), "budget": a.budget, "data": a.data,
                               "calib_count": a.calib_count, "models": {}}
    for name, path in todo:
        base = model_args(name, path, a.data)
        if base is None:
            continue
        root = ROOT / "tmp" / "bench-accuracy" / name
        if a.calib_counts:
            runs = {int(c): one_run(base, root / f"plain-{c}", None, a.threads, int(c)) for c in a.calib_counts.split(",")}
            results["models"][name] = {"by_calib_count": runs}
            for c, r in runs.items():
                print(f"{name} calib {c}: {r['wall_s']} s, " + ", ".join(
                    f"{t} {-v['drop_points']:+.2f} pt" for t, v in r["targets"].items()), flush=True)
            continue
        if a.variants:
            # one cache for the variants (calibration and PTQ are shared), a run folder each
            stamp = time.strftime("%Y%m%d-%H%M%S")
            runs = {v: one_run(base, root / "ablation", None, a.threads, a.calib_count, VARIANTS[v], fresh=False,
                               run_id=f"{v}-{stamp}", targets=targets) for v in a.variants.split(",")}
            results["models"][name] = {"variants": runs, "effects": rule_effects(runs)}
            if a.recipe and "plain" in runs:
                r = recipe_row(base, runs["plain"]["run_dir"], root / "recipe")
                results["models"][name]["recipe"] = r
                print(f"{name} recipe (NNCF + OpenVINO, Ultralytics): {r['delta_pt']:+.2f} {r['delta_ci_pt']}; "
                      f"openvino target minus recipe {r['openvino_minus_recipe_pt']:+.2f} "
                      f"{r['openvino_minus_recipe_ci_pt']}", flush=True)
            for v, r in runs.items():
                print(f"{name} {v}: " + ", ".join(
                    f"{t} {-x['drop_points']:+.2f} pt {x['delta_ci_pt']} {x['int8_conv_mac_share'] * 100:.1f}% MACs"
                    for t, x in r["targets"].items()), flush=True)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(results, indent=2))
            print(effects_table({"models": {name: results["models"][name]}}), flush=True)
            continue
        plain = one_run(base, root / "plain", None, a.threads, a.calib_count)
        auto = one_run(base, root / "auto", a.budget, a.threads, a.calib_count)
        results["models"][name] = {"plain": plain, "auto": auto,
                                   "auto_over_plain_wall": round(auto["wall_s"] / plain["wall_s"], 2)}
        print(f"{name}: plain {plain['wall_s']} s, auto {auto['wall_s']} s "
              f"(x{results['models'][name]['auto_over_plain_wall']})", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2))  # written again below when done
    if a.calib_counts or a.variants:
        a.out.write_text(json.dumps(results, indent=2))
        print(f"\nCPU: {results['cpu']}; written {a.out}")
        return
    print(f"\nCPU: {results['cpu']}; budget {a.budget} points; FP32 and INT8 evaluated on ORT's CPU EP")
    print(f"{'model':10} {'target':9} {'run':5} {'FP32':>7} {'INT8':>7} {'delta pt':>8} {'95% CI':>16} {'MACs INT8':>10} "
          f"{'float':>5} {'wall s':>7}  auto chose")
    for name, r in results["models"].items():
        for run in ("plain", "auto"):
            for t, v in r[run]["targets"].items():
                g = v["guard"]
                print(f"{name:10} {t:9} {run:5} {r[run]['fp32_map50_95']:>7.4f} {v['map50_95']:>7.4f} "
                      f"{-v['drop_points']:>+8.2f} {str(v['delta_ci_pt']):>16} {v['int8_conv_mac_share'] * 100:>9.1f}% {len(v['float_layers']):>5} "
                      f"{r[run]['wall_s']:>7.1f}  {'' if g is None else g['chosen'] + (' (met)' if g['met'] else ' (NOT met)')}")
    print(f"\nwritten {a.out}")


if __name__ == "__main__":
    main()
