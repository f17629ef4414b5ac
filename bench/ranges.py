"""Activation-range estimators x calibration count on 300 real images (issue #22's table).

    .venv/bin/python bench/ranges.py                                   # YOLOv5n, YOLOv10s, demo; all methods
    .venv/bin/python bench/ranges.py --models yolov5n --methods max,mse --counts 32,512
    .venv/bin/python bench/ranges.py --extra name=/path/model.onnx      # any other real COCO detector

For each model x method x count: the `tensorrt` target (ModelOpt Q/DQ; every method but max through
the streamed histogram pass, tasks/quantization/ranges.py) calibrated on that many images of
../shared/data/coco-calib-512 (the demo: its own calibration images, at most 64), evaluated on the
300 images of coco-val2017-300 (the demo: its 100): mAP50-95 delta with its 95% paired bootstrap
interval, the share of convolution MACs in INT8, calibration wall time (ModelOpt's max pass plus the
histogram pass) and the quantize step's peak RSS. One cache per model: FP32 is evaluated once.
Prints a table and writes bench/results/ranges.json with the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, get_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared_data import SHARED  # noqa: E402
from tasks.config import OrtCpuSettings, QuantSettings, RunConfig  # noqa: E402
from tasks.evaluation.runtime import cpu_info, cpu_label  # noqa: E402
from tasks.pipeline import run_int8  # noqa: E402
from tasks.targets.table import target as target_of  # noqa: E402

OUT = ROOT / "bench" / "results"
VAL = SHARED / "data/coco-val2017-300"
MODELS = {"yolov5n": SHARED / "models/yolov5n-coco/yolov5n.onnx", "yolov10s": SHARED / "models/yolov10s-coco/yolov10s.onnx",
          "demo": None}


# the estimators each target takes, from the settings themselves (ort-cpu's "minmax" is named max here)
TAKES = {"tensorrt": set(get_args(QuantSettings.model_fields["method"].annotation)),
         "ort-cpu": {{"minmax": "max"}.get(m, m) for m in get_args(OrtCpuSettings.model_fields["calibrate_method"].annotation)},
         "openvino": {"nncf"}}


def _base(name: str, path: Path | None) -> dict[str, Any]:
    if path is None:
        return {"demo": True}
    return {"model": str(path), "calib_images": str(SHARED / "data/coco-calib-512/images"),
            "images": str(VAL / "images"), "annotations": str(VAL / "annotations/instances_val2017.json")}


def one(name: str, path: Path | None, target: str, method: str, count: int, root: Path) -> dict[str, Any]:
    # tensorrt: --method; ort-cpu: --ort-calibration (its "minmax" is max taken per side); openvino:
    # NNCF's own statistics (method "nncf": per-sample min/max averaged), no estimator to choose
    settings = {"tensorrt": {"quant": {"method": method}},
                "ort-cpu": {"ort_cpu": {"calibrate_method": {"max": "minmax"}.get(method, method)}}}.get(target, {})
    cfg = RunConfig.model_validate({
        **_base(name, path), "calib_count": count, **settings, "targets": [target],
        "run_root": str(root), "run_id": f"{target}-{method}-{count}-{time.strftime('%H%M%S')}", "max_map_drop": None,
        "eval": {"providers": ["cpu"]}})
    t0 = time.perf_counter()
    s = run_int8(cfg)
    run = Path(s["run_dir"])
    qdir = target_of(target).qdir
    qcfg = json.loads((run / qdir / "config.json").read_text())
    ranges = qcfg.get("ranges") or {}
    d = s["delta"]
    return {"model": name, "target": target, "method": method, "count": count, "images": s["int8"]["images"],
            "fp32": s["fp32"]["map50_95"], "delta_pt": round(d["map50_95"] * 100, 2),
            "ci_pt": [round(x * 100, 2) for x in d["map50_95_ci"]] if d.get("map50_95_ci") else None,
            "mac_share": s["quantization"].get("int8_conv_mac_share"),
            # a fresh build's cost: ModelOpt's max pass + the histogram pass + the search, each
            # measured when it ran (both passes are shared by the methods of one count)
            "calibration_s": ranges.get("calibration_s", qcfg.get("wall_s")),
            "max_pass_s": ranges.get("max_pass_s", qcfg.get("wall_s")), "histogram_s": ranges.get("histogram_pass_s"),
            "peak_rss_mib": max(x for x in (qcfg.get("peak_rss_mib"), ranges.get("max_pass_peak_rss_mib"),
                                            ranges.get("histogram_pass_peak_rss_mib")) if x is not None),
            "cached": s["cached"]["quantize"],
            "run_wall_s": round(time.perf_counter() - t0, 1)}


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README's table: one row per model x target x method, the counts side by side."""
    counts = sorted({r["count"] for r in rows})
    keys = list(dict.fromkeys((r["model"], r.get("target", "tensorrt"), r["method"]) for r in rows))
    by = {(r["model"], r.get("target", "tensorrt"), r["method"], r["count"]): r for r in rows}
    head = "| model | target | estimator | " + " | ".join(f"{c} samples" for c in counts) + " | MACs INT8 | calibration s | peak MiB |"
    lines = [head, "|---|---|---|" + "---:|" * (len(counts) + 3)]
    for m, t, meth in keys:
        cells, macs, cal, peak = [], set(), [], []
        for c in counts:
            r = by.get((m, t, meth, c))
            if r is None:
                cells.append("")
                continue
            ci = r["ci_pt"]
            cells.append(f"{r['delta_pt']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{r['delta_pt']:+.2f}")
            macs.add(f"{r['mac_share'] * 100:.1f}%")
            cal.append(f"{r['calibration_s']:.0f}" if r.get("calibration_s") is not None else "?")
            peak.append(f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") is not None else "?")
        lines.append(f"| {m} | `{t}` | {meth} | " + " | ".join(cells)
                     + f" | {' / '.join(sorted(macs))} | {' / '.join(cal)} | {' / '.join(peak)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="yolov5n,yolov10s,demo")
    ap.add_argument("--extra", action="append", default=[], help="NAME=PATH of another real COCO detector")
    ap.add_argument("--targets", default="tensorrt")
    ap.add_argument("--methods", default="max,entropy,mean-max,percentile,mse")
    ap.add_argument("--counts", default="32,128,512")
    ap.add_argument("--root", type=Path, default=ROOT / "tmp" / "bench-ranges")
    ap.add_argument("--table", action="store_true", help="print bench/results/ranges.json as the README's table")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads((OUT / "ranges.json").read_text())["rows"]))
        return
    # every name checked before the first (minutes-long) run
    targets, methods = [t for t in args.targets.split(",") if t], [m for m in args.methods.split(",") if m]
    for what, got, known in (("--models", [m for m in args.models.split(",") if m], MODELS),
                             ("--targets", targets, TAKES), ("--methods", methods, set().union(*TAKES.values()))):
        if bad := [x for x in got if x not in known]:
            ap.error(f"{what}: unknown {', '.join(bad)}; choose from {', '.join(sorted(known))}"
                     + (" (another model: --extra NAME=PATH)" if what == "--models" else ""))
    for t in targets:
        if t != "openvino" and (skip := [m for m in methods if m not in TAKES[t]]):
            print(f"note: {t} takes no {', '.join(skip)}: those rows are skipped for it")
    models = {m: MODELS[m] for m in args.models.split(",") if m}
    models.update({k: Path(v) for k, v in (e.split("=", 1) for e in args.extra)})
    out = OUT / "ranges.json"
    # rows of earlier invocations are kept (one per model x target x method x count, the newest wins)
    rows = [r for r in (json.loads(out.read_text())["rows"] if out.exists() else []) if r.get("cpu_label", cpu_label()) == cpu_label()]
    for name, path in models.items():
        if path is not None and not path.exists():
            print(f"skipped {name}: {path} is absent")
            continue
        for count in [int(c) for c in args.counts.split(",")]:
            if name == "demo" and count > 64:
                continue  # the demo has 64 calibration images
            for target, method in [(t, m) for t in targets
                                   for m in (["nncf"] if t == "openvino" else methods) if m in TAKES[t]]:
                r = {**one(name, path, target, method, count, args.root / name), "cpu_label": cpu_label()}
                same = ("model", "target", "method", "count")
                rows = [x for x in rows if any(x.get(k, "tensorrt") != r[k] for k in same)] + [r]
                ci = r["ci_pt"] or ["?", "?"]
                print(f"{name:9} {target:9} {method:10} {count:4}: {r['delta_pt']:+.2f} pt [{ci[0]:+.2f}, {ci[1]:+.2f}] on "
                      f"{r['images']} images, {r['mac_share'] * 100:.1f}% MACs INT8, calibration "
                      f"{r['calibration_s']} s (histograms {r['histogram_s']} s), peak {r['peak_rss_mib']} MiB", flush=True)
                OUT.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({"cpu": cpu_info(), "cpu_label": cpu_label(), "rows": rows}, indent=1))
    print(f"CPU: {cpu_label()}\nwrote {out}")


if __name__ == "__main__":
    main()
