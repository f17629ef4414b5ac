"""INT8 accuracy on real detectors, plain and in auto mode, for every target (issue #13's figures).

    .venv/bin/python bench/accuracy.py                          # demo + ../shared's YOLOv10s and YOLOv5n
    .venv/bin/python bench/accuracy.py --models yolov10s --budget 0.5
    .venv/bin/python bench/accuracy.py --extra yolov8n=/path/yolov8n.onnx   # a model the defaults never saw
    .venv/bin/python bench/accuracy.py --models "" --data demo --variants plain \\
        --extra yolo26n=demo/model/yolo26n-shapes.onnx --extra yolo26n-raw=demo/model/yolo26n-shapes-raw.onnx

    .venv/bin/python bench/accuracy.py --models yolov5n --variants plain,no-head  # recovery ablation
    .venv/bin/python bench/accuracy.py --out bench/results/accuracy-ablation-300.json --effects  # paired effects
    .venv/bin/python bench/accuracy.py --variants plain --recipe --out bench/results/recipes.json  # the recipes
    .venv/bin/python bench/accuracy.py --out bench/results/recipes.json --recipes   # ... as the README's table

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
from tasks.evaluation.sources.base import DataSpec  # noqa: E402
from tasks.evaluation.runtime import cpu_info, cpu_label  # noqa: E402
from tasks.pipeline import run_int8  # noqa: E402
from tasks.quantization.modelopt_ptq import ort_quantization_restored  # noqa: E402
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
                                       "reconstruct": {"reconstruction": {"mode": "on"}},
                                       # fp16 float parts (tensorrt only; docs/targets.md, "fp16 float parts")
                                       "fp16": {"quant": {"high_precision_dtype": "fp16"}}}
SHARED_MODELS = {"yolov10s": SHARED / "models/yolov10s-coco/yolov10s.onnx",
                 "yolov5n": SHARED / "models/yolov5n-coco/yolov5n.onnx"}


def model_args(name: str, path: Path | None, data: str = "300") -> dict[str, Any] | None:
    if name == "demo":
        return {"demo": True}
    p = path or SHARED_MODELS.get(name)
    if p is None or not Path(p).exists():
        print(f"skipped {name}: {p} is absent")
        return None
    if data == "demo":  # another detector trained on the demo's shapes (the YOLO26n exports in demo/model)
        d = load_demo_config()["paths"]
        return {"model": str(p), **{k: str(d[k]) for k in ("calib_images", "images", "annotations")}}
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


# The TensorRT recipes beside the tensorrt target: ModelOpt ONNX PTQ called as users call it, on the plain
# run's own calibration tensor (the same letterboxed images), evaluated on its images with its settings.
TRT_RECIPES: dict[str, dict[str, Any]] = {
    # Ultralytics 8.4.190, ultralytics/utils/export/engine.py modelopt_quantize_onnx (`yolo export
    # format=engine int8=True`): max calibration on the CPU EP, the head's final bare convolutions and DFL
    # kept in float, ModelOpt's other defaults (up to 512 images; here the plain run's 128)
    "ultralytics-trt": {"calibration_method": "max", "calibration_eps": ["cpu"],
                        "nodes_to_exclude": [r".*\.2/Conv$", r".*/dfl/"]},
    # ModelOpt 0.47 `quantize(quantize_mode="int8")` with nothing excluded and max calibration (its own
    # default calibrator for int8 is entropy: 2.5-2.8x the time of max, 100x after an unlucky first sample,
    # docs/benchmarks.md), on the CPU EP as every row here (scales do not depend on the EP)
    "modelopt-defaults": {"calibration_method": "max", "calibration_eps": ["cpu"]},
}
# Both keep ModelOpt's fp16 float parts in deployment; they are evaluated with fp32 float parts, as the
# target is: on ORT's CPU EP an fp16 Q/DQ model rounds its activations toward zero and scores ~0 mAP
# (docs/accuracy.md, "fp16 float parts").
RECIPE_PRECISION = "fp32"


def _paired(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """other - base in points, its paired 95% interval and the per-resample differences (for pooling)."""
    ci = paired_interval(base["bootstrap"], other["bootstrap"], "map50_95")
    if ci is None:
        raise SystemExit("a recipe was not resampled like the run it is compared with; run them again together")
    diff = (np.asarray(other["bootstrap"]["map50_95"]) - np.asarray(base["bootstrap"]["map50_95"])) * 100
    return {"effect_pt": round((other["map50_95"] - base["map50_95"]) * 100, 3),
            "ci_pt": [round(c * 100, 2) for c in ci], "diff": [round(float(x), 4) for x in diff]}


def trt_recipe_row(plain_run_dir: str | Path, work: Path, name: str) -> dict[str, Any]:
    """One TensorRT recipe (TRT_RECIPES) on the plain run's calibration tensor and images: its delta
    against FP32 and the tensorrt target minus the recipe, with paired intervals (same resamples)."""
    from modelopt.onnx.quantization import quantize  # heavy: loaded when used

    run = Path(plain_run_dir)
    cfg = json.loads((run / "run-config.json").read_text())
    cal = json.loads((run / "quantize-int8" / "calibration.json").read_text())
    model = Path(cfg["model"])
    inp = json.loads((run / "results" / "summary.json").read_text())["model"]
    arr = np.load(cal["tensor_path"])
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{model.stem}-{name}.onnx"
    src = work / "src" / model.name  # ModelOpt was seen rewriting its input file: it gets a copy
    src.parent.mkdir(exist_ok=True)
    shutil.copyfile(model, src)
    t0 = time.perf_counter()
    # ModelOpt patches ORT's quantizer process-wide: undone after, or the next run's ort-cpu build breaks
    with ort_quantization_restored():
        quantize(onnx_path=str(src), quantize_mode="int8", calibration_data={inp.get("input", "images"): arr},
                 high_precision_dtype=RECIPE_PRECISION, output_path=str(out), **TRT_RECIPES[name])
    wall = time.perf_counter() - t0
    st = EvalSettings.model_validate({**cfg["eval"], "deployed_runs": 0})
    source = DataSpec(cfg["images"], cfg["annotations"], cfg.get("data"), cfg.get("split", "val"))
    m = evaluate_model(out, source, cfg["subset"], st, cfg["subset_seed"])
    fp = json.loads((run / "fp32-coco" / "metrics.json").read_text())
    tgt = json.loads((run / "int8-coco" / "metrics.json").read_text())
    return {"recipe": name, "settings": {**TRT_RECIPES[name], "high_precision_dtype": RECIPE_PRECISION},
            "calibration_images": int(arr.shape[0]), "quantize_s": round(wall, 1), "map50_95": m["map50_95"],
            "delta": _paired(fp, m), "target": "tensorrt", "target_minus_recipe": _paired(m, tgt)}


def recipe_row(base: dict[str, Any], plain_run_dir: str | Path, work: Path) -> dict[str, Any]:
    """The NNCF + OpenVINO recipe Ultralytics users run (bench/targets.py nncf_openvino_peer: NNCF's
    defaults, MIXED preset, the head's arithmetic and Sigmoids ignored) on the plain run's own
    calibration images, evaluated on its images: its delta against FP32, and the `openvino` target
    minus the recipe, both with paired intervals (same resamples)."""
    run = Path(plain_run_dir)
    cfg = json.loads((run / "run-config.json").read_text())
    cal = json.loads((run / "quantize-int8" / "calibration.json").read_text())
    files = [Path(f) for f in cal["files"]] if "files" in cal else [Path(cal["folder"]) / f for f in cal["images"]]
    model = Path(cfg["model"])
    shape = json.loads((run / "results" / "summary.json").read_text())["model"]["input_shape"]
    work.mkdir(parents=True, exist_ok=True)
    xml = work / f"{model.stem}-recipe.xml"
    built = nncf_openvino_peer(model, files, tuple(shape), xml)
    st = EvalSettings.model_validate({**cfg["eval"], "runtime": "openvino", "deployed_runs": 0})
    source = DataSpec(cfg["images"], cfg["annotations"], cfg.get("data"), cfg.get("split", "val"))
    m = evaluate_model(xml, source, cfg["subset"], st, cfg["subset_seed"], io_model=model)
    fp = json.loads((run / "fp32-coco" / "metrics.json").read_text())
    ov = json.loads((run / "int8-openvino-coco" / "metrics.json").read_text())
    return {"recipe": "nncf-openvino", "built": built, "calibration_images": len(files), "map50_95": m["map50_95"],
            "delta": _paired(fp, m), "target": "openvino", "target_minus_recipe": _paired(m, ov)}


def recipes_table(results: dict[str, Any]) -> str:
    """The README's recipe table: per model, each target beside the recipes users run for it, INT8
    minus FP32 with its interval, and the target minus each recipe paired; pooled per recipe."""
    def ci(c: dict[str, Any]) -> str:
        return f"{c['effect_pt']:+.2f} [{c['ci_pt'][0]:+.2f}, {c['ci_pt'][1]:+.2f}]"

    lines = ["| model | target | target: INT8 - FP32 | recipe | recipe: INT8 - FP32 | target - recipe |",
             "|---|---|---:|---|---:|---:|"]
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for name, r in results["models"].items():
        plain = (r.get("variants") or {}).get("plain")
        for rec in r.get("recipes", []):
            t = plain["targets"][rec["target"]]
            tci = t["delta_ci_pt"]
            lines.append(f"| {name} | `{rec['target']}` | {-t['drop_points']:+.2f} [{tci[0]:+.2f}, {tci[1]:+.2f}] | "
                         f"{rec['recipe']} | {ci(rec['delta'])} | {ci(rec['target_minus_recipe'])} |")
            by_recipe.setdefault(rec["recipe"], []).append(rec["target_minus_recipe"])
    lines.append("")
    for k, cells in by_recipe.items():
        p = pooled(cells)
        lines.append(f"- target minus `{k}`, pooled over {p['cells']} models: {p['effect_pt']:+.2f} "
                     f"[{p['ci_pt'][0]:+.2f}, {p['ci_pt'][1]:+.2f}]")
    return "\n".join(lines)


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
    ap.add_argument("--data", choices=sorted([*DATA, "demo"]), default="300",
                    help="demo: the demo's own images, for detectors trained on its shapes (--extra NAME=PATH)")
    ap.add_argument("--calib-count", type=int, help="calibration images (default: the run's own default)")
    ap.add_argument("--variants", help="plain runs with one recovery rule toggled each, instead of auto mode: "
                                       + ",".join(VARIANTS))
    ap.add_argument("--targets", help="with --variants: the targets to run (a "
                    "reconstruction of YOLOv10s on both Q/DQ targets is hours on 2 cores)")
    ap.add_argument("--recipe", action="store_true", help="with --variants: also the recipes users run, beside "
                                                          "their targets: NNCF + OpenVINO (openvino), Ultralytics' "
                                                          "TensorRT recipe and ModelOpt's defaults (tensorrt)")
    ap.add_argument("--out", type=Path, default=OUT / "accuracy.json")
    ap.add_argument("--replace", action="store_true", help="overwrite --out when it exists (results files are "
                                                           "cited by the docs: never replaced by accident)")
    ap.add_argument("--recipes", action="store_true", help="print --out (a --recipe run) as the README's recipe table")
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
    if a.recipes:
        print(recipes_table(json.loads(a.out.read_text())))
        return
    if a.out.exists() and not a.replace:  # before any run: a finished run would overwrite it at its end
        ap.error(f"--out {a.out} exists (a results file the docs may cite); pass another --out, or --replace to "
                 f"overwrite it")
    if a.variants and (bad := [v for v in a.variants.split(",") if v not in VARIANTS]):
        ap.error(f"--variants: unknown {', '.join(bad)}; choose from {', '.join(VARIANTS)}")  # before any run
    if (a.targets or a.recipe) and not a.variants:  # the plain + auto comparison always runs every target
        ap.error("--targets and --recipe go with --variants (e.g. --variants plain,reconstruct)")
    targets = (a.targets or ",".join(TARGETS)).split(",")
    if bad := [t for t in targets if t not in TARGETS]:
        ap.error(f"--targets: unknown {', '.join(bad)}; choose from {', '.join(TARGETS)}")
    if a.recipe and not {"openvino", "tensorrt"} & set(targets):
        ap.error("--recipe compares with the openvino and tensorrt targets: add one of them to --targets")
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
                recipes = ([trt_recipe_row(runs["plain"]["run_dir"], root / "recipe", k) for k in TRT_RECIPES]
                           if "tensorrt" in targets else [])
                if "openvino" in targets:
                    recipes.append(recipe_row(base, runs["plain"]["run_dir"], root / "recipe"))
                results["models"][name]["recipes"] = recipes
                for r in recipes:
                    d, t = r["delta"], r["target_minus_recipe"]
                    print(f"{name} recipe {r['recipe']}: {d['effect_pt']:+.2f} {d['ci_pt']}; {r['target']} target "
                          f"minus recipe {t['effect_pt']:+.2f} {t['ci_pt']}", flush=True)
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
