"""INT8 targets side by side, in one process: FP32, ModelOpt `tensorrt`, our `ort-cpu`, and the peer
(ONNX Runtime's own `quantize_static`: QDQ, MinMax, its default int8 activations and per-tensor
weights, the decode tail after the head kept in float) twice: as called with its defaults (`peer`)
and with uint8 activations (`peer-u8`, its best on x86), on the same model, calibration images and
evaluation subset; also `ort-cpu` built with ModelOpt's max scales where ModelOpt has them (does its
own calibration earn its keep?).

    .venv/bin/python bench/targets.py                      # demo + yolov5n (+ yolov10m-random if exported)
    .venv/bin/python bench/targets.py --models yolo11n-random # any scripts/export_random_yolo.py export
    .venv/bin/python bench/targets.py --models demo --rounds 5

Writes bench/results/targets.json and bench/results/targets.png (mAP50-95 against latency for
every variant) and prints a table. Latency: median of interleaved rounds (every variant once per
round, so drifts of a shared machine hit all alike) of single-image inference on the CPU EP, under two
session settings measured in the same rounds: the evaluator's (ORT's worker threads do not spin
between runs) and ORT's defaults (they spin, as a deployed session does). The `<arch>-random` graphs
(YOLOv10m, YOLO11n ...) have random weights (made by scripts/export_random_yolo.py): only their latency
is read. TensorRT: when the TensorRT EP can start, an engine from the Q/DQ model is timed against an
FP16 engine; otherwise the reason it was skipped is recorded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared_data import SHARED, YOLOV5N, YOLOV10S  # noqa: E402
from tasks.quantization.calibration import CalibReader, pick_calib_images  # noqa: E402
from tasks.config import OrtCpuSettings, QuantSettings, load_demo_config  # noqa: E402
from tasks.evaluation.evaluate import EvalSettings, evaluate_model  # noqa: E402
from tasks.evaluation.sources.base import DataSpec  # noqa: E402
from tasks.quantization.entropy import activation_scales  # noqa: E402
from tasks.quantization.ort_qdq import MinMaxSafeReader, build_ort_cpu, symmetric_overrides, with_min_opset  # noqa: E402
from tasks.evaluation.preprocess import PreprocessSpec  # noqa: E402
from tasks.quantization.modelopt_ptq import decode_tail_nodes, ort_cpu_kernels  # noqa: E402
from tasks.evaluation.runtime import latency_stats, model_io  # noqa: E402
from tasks.evaluation.sessions import open_session  # noqa: E402
from tasks.evaluation.trt_latency import tensorrt_timing  # noqa: E402

OUT = ROOT / "bench" / "results"
log = logging.getLogger("bench")


def model_set(names: list[str]) -> list[dict[str, Any]]:
    out = []
    for name in names:
        if name == "demo":
            d = load_demo_config()
            out.append({"name": "demo-yolov10n", "model": d["model"], "calib_images": d["paths"]["calib_images"],
                        "images": d["paths"]["images"], "annotations": d["paths"]["annotations"]})
        elif name in ("yolov5n", "yolov10s"):
            real = {"yolov5n": YOLOV5N, "yolov10s": YOLOV10S}[name]
            if not real["model"].exists():
                print(f"skipped {name}: {SHARED} is absent")
                continue
            out.append({"name": f"{name}-coco", **real})
        elif name.endswith("-random"):  # timing only: yolov10m-random, yolo11n-random ...
            p = ROOT / f"tmp/bench-models/{name}.onnx"
            if not p.exists():
                print(f"skipped {name}: {p} is absent (make it with ../venv-train/bin/python "
                      f"scripts/export_random_yolo.py --arch {name.removesuffix('-random')})")
                continue
            out.append({"name": name, "model": p, "calib_images": load_demo_config()["paths"]["calib_images"],
                        "images": None, "annotations": None})
        else:
            raise SystemExit(f"unknown model {name!r}: demo, yolov5n, yolov10s or <arch>-random")
    return out


def peer_quantize(model: Path, reader: CalibReader, out: Path, activations: str = "int8") -> dict[str, Any]:
    """ORT's quantize_static as a user would call it, decode tail in float (as in issue #7).

    `activations="uint8"` is the peer at its best on x86 (ORT's documentation recommends u8 x s8
    there, and it is the configuration that fuses every convolution, as the issue's peer did)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    tail = decode_tail_nodes(onnx.load(str(model)))
    reader.rewind()
    act = QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        model, _ = with_min_opset(model, Path(td))  # ORT's quantizer writes an invalid graph below opset 13
        quantize_static(str(model), str(out), MinMaxSafeReader(reader, 8), quant_format=QuantFormat.QDQ,
                        activation_type=act, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=tail,
                        extra_options={"CalibMaxIntermediateOutputs": 8}, calibration_providers=["CPUExecutionProvider"])
    return {"wall_s": round(time.perf_counter() - t0, 2), "decode_tail_nodes": len(tail), "activations": activations}


def nncf_openvino_peer(model: Path, files: list[Path], shape: tuple, out_xml: Path) -> dict[str, Any]:
    """The recipe CPU users pick: Ultralytics' `format=openvino, int8=True`, which runs NNCF `quantize`
    on the OpenVINO model with the MIXED preset (symmetric weights, asymmetric activations) and ignores
    the detection head's arithmetic (Add, Sub, Mul, Div), its DFL and every Sigmoid. Here from the
    ONNX export (Ultralytics converts from PyTorch), calibrated on the same images, preprocessed by the
    evaluator's letterbox."""
    import re

    import nncf
    import openvino as ov

    from tasks.evaluation.preprocess import preprocess_file

    t0 = time.perf_counter()
    ov_model = ov.convert_model(str(model))
    ops = [(o.get_friendly_name(), o.get_type_name()) for o in ov_model.get_ops()]
    # The head is the last `model.N` (PyTorch module path, kept in ONNX names: `/model.23/...` from
    # Ultralytics, `/model/model.24/...` from YOLOv5's own export). Ultralytics' patterns
    # (`.*model.23/.*/Add`, ...) are written for PyTorch-traced names, where they catch the arithmetic of
    # the head module itself (box decoding), not its submodules' (a convolution's bias Add) and not the
    # SiLUs (one Swish op after conversion). An ONNX export's names differ, so the same scope is taken by
    # op type: Add, Subtract, Multiply and Divide directly in the head, and everything of its DFL.
    heads = sorted({int(m.group(1)) for n, _ in ops if (m := re.search(r"(?:^|/)model\.(\d+)/", n))})
    head = f"model.{heads[-1]}/" if heads else None
    names = [n for n, t in ops if head and head in n and (
        (t in ("Add", "Subtract", "Multiply", "Divide") and "/" not in n.split(head, 1)[1])
        or f"{head}dfl/" in n)]
    ignored = nncf.IgnoredScope(names=names, types=["Sigmoid"], validate=False)
    hw = (shape[2], shape[3])
    data = nncf.Dataset(files, lambda p: preprocess_file(p, hw, PreprocessSpec())[0][None].astype(np.float32))
    q = nncf.quantize(ov_model, data, preset=nncf.QuantizationPreset.MIXED, ignored_scope=ignored,
                      subset_size=len(files))
    ov.save_model(q, str(out_xml))
    return {"tool": f"nncf {nncf.__version__} + openvino {ov.get_version()}", "preset": "MIXED",
            "ignored": {"head": head, "names": len(names), "types": ["Sigmoid"]}, "wall_s": round(time.perf_counter() - t0, 1)}


# Variants that run on OpenVINO's CPU plugin (the rest on ONNX Runtime's CPU EP).
RUNTIME = {"ov-fp32": "openvino", "nncf-ov": "openvino", "ort-cpu@ov": "openvino", "tensorrt@ov": "openvino",
           "openvino": "openvino"}


def openvino_target(model: Path, reader: CalibReader, input_name: str, out_xml: Path) -> dict[str, Any]:
    """The flow's `openvino` target with its default settings (tasks/targets/openvino.py): NNCF on the
    OpenVINO model, the decode and Sigmoids in float, no bias correction (the target's default), the same samples."""
    import onnx

    from tasks.config import OpenVinoSettings
    from tasks.quantization.nncf_ptq import build_openvino, conv_summary

    st = OpenVinoSettings()
    reader.rewind()
    samples = [reader.get_next()[input_name] for _ in range(len(reader))]
    rec = build_openvino(model, samples, len(samples), out_xml, st, [], [], [])
    return {**{k: v for k, v in rec.items() if k != "ignored_scope"}, "settings": st.model_dump(),
            "ignored_names": len(rec["ignored_scope"]["names"]), "openvino_convs": conv_summary(onnx.load(str(model)), out_xml)}


def interleaved_latency(paths: dict[str, Path], x: np.ndarray, input_name: str, rounds: int, iters: int,
                        threads: int | None) -> dict[str, dict[str, dict[str, float]]]:
    """p50/p90 per variant under two session settings, all interleaved in the same rounds:
    `eval` (the evaluator's: worker threads do not spin) and `ort_default` (ORT's defaults, spinning
    on, as a deployed session runs). OpenVINO variants run with the same configuration in both (its
    latency hint, one stream, f32 precision for float layers)."""
    sessions = {(k, mode): open_session(p, EvalSettings(providers=["cpu"], runtime=RUNTIME.get(k, "onnxruntime")),
                                        threads, spin=(mode == "ort_default"))[0]
                for k, p in paths.items() for mode in ("eval", "ort_default")}
    for s in sessions.values():
        for _ in range(5):
            s.run(None, {input_name: x})
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(iters):
                t0 = time.perf_counter()
                s.run(None, {input_name: x})
                samples[k].append(time.perf_counter() - t0)
    out: dict[str, dict[str, dict[str, float]]] = {k: {} for k in paths}
    for (k, mode), v in samples.items():
        st = latency_stats(v)
        out[k][mode] = {"p50_ms": st["p50"], "p90_ms": st["p90"], "n": st["n"]}
    return out


def recovered(model: Path, raw: Path, reader: CalibReader, input_name: str, target: str) -> dict[str, Any]:
    """The flow's recovery step (tasks/quantization/recovery.py, default settings) on a quantizer's output, in place:
    the variants here are what the flow ships."""
    from tasks.config import RecoverySettings
    from tasks.quantization.recovery import compute_stats, refine

    rs = RecoverySettings()
    reader.rewind()
    samples = [reader.get_next()[input_name] for _ in range(min(rs.stats_samples, len(reader)))]
    stats = compute_stats(model, raw, samples, input_name)
    out = raw.with_name(raw.stem + ".recovered.onnx")
    # what the flow ships: the tensorrt artifact with INT8 weights (quant.dq_only, its default)
    rec = refine(model, raw, stats, out, target, rs, dq_only=(target == "tensorrt" and QuantSettings().dq_only))
    out.replace(raw)
    return {"int8_conv_mac_share": rec["mac"]["int8_conv_mac_share"], "float_layers": len(rec["float_layers"])}


def bench_model(m: dict[str, Any], work: Path, calib_count: int, rounds: int, iters: int,
                threads: int | None, variants: list[str]) -> dict[str, Any]:
    import onnx

    model = Path(m["model"])
    input_name, shape, _ = model_io(onnx.load(str(model)))
    files = pick_calib_images(Path(m["calib_images"]), calib_count, seed=0)
    reader = CalibReader(files, input_name, input_shape=shape, spec=PreprocessSpec())
    paths = {"fp32": model}
    build: dict[str, Any] = {}
    if "tensorrt" in variants:
        from tasks.quantization.modelopt_ptq import run_ptq

        rec = run_ptq(model, input_name, reader, QuantSettings(calib_eps=["cpu"]), work / "tensorrt.onnx",
                      work / "tensorrt.log")
        paths["tensorrt"] = work / "tensorrt.onnx"
        build["tensorrt"] = {"wall_s": rec["wall_s"], "peak_rss_mib": rec["peak_rss_mib"],
                             "conv_quantized": rec["qdq"]["conv_quantized"], "conv_total": rec["qdq"]["conv_total"],
                             **recovered(model, paths["tensorrt"], reader, input_name, "tensorrt")}
    if "ort-cpu" in variants:
        rec = build_ort_cpu(model, reader, OrtCpuSettings(), work / "ort-cpu.onnx", work / "ort-cpu.log")
        paths["ort-cpu"] = work / "ort-cpu.onnx"
        build["ort-cpu"] = {"wall_s": rec["wall_s"], "peak_rss_mib": rec["peak_rss_mib"],
                            "reduce_range": rec["reduce_range"], "reduce_range_reason": rec["reduce_range_reason"],
                            **recovered(model, paths["ort-cpu"], reader, input_name, "ort-cpu")}
    if "tensorrt" in paths and "ort-cpu" in paths:
        # the same target with ModelOpt's max scales where ModelOpt calibrated (symmetric, mapped to
        # uint8 with zero point 128): does ort-cpu's own asymmetric calibration earn its keep?
        # (recovery does not change activation scales, so the recovered tensorrt model has ModelOpt's)
        amax = {t: s * 127.0 for t, s in activation_scales(onnx.load(str(paths["tensorrt"]))).items() if t != input_name}
        rec = build_ort_cpu(model, reader, OrtCpuSettings(), work / "ort-cpu-mo.onnx", work / "ort-cpu-mo.log",
                            tensor_overrides=symmetric_overrides(amax))
        paths["ort-cpu-modelopt-scales"] = work / "ort-cpu-mo.onnx"
        build["ort-cpu-modelopt-scales"] = {"wall_s": rec["wall_s"], "tensors_from_modelopt": rec["tensor_overrides"]}
    if "peer" in variants:
        build["peer"] = peer_quantize(model, reader, work / "peer.onnx")
        paths["peer"] = work / "peer.onnx"
    if "peer-u8" in variants:
        build["peer-u8"] = peer_quantize(model, reader, work / "peer-u8.onnx", activations="uint8")
        paths["peer-u8"] = work / "peer-u8.onnx"
    if "openvino" in variants:
        paths["ov-fp32"] = model
        build["ov-fp32"] = {"runtime": "openvino", "precision": "f32"}
        build["nncf-ov"] = nncf_openvino_peer(model, files, shape, work / "nncf-ov.xml")
        paths["nncf-ov"] = work / "nncf-ov.xml"
        from tasks.quantization.nncf_ptq import conv_summary

        build["nncf-ov"]["openvino_convs"] = conv_summary(onnx.load(str(model)), paths["nncf-ov"])
        build["openvino"] = openvino_target(model, reader, input_name, work / "openvino.xml")
        paths["openvino"] = work / "openvino.xml"
        for k in ("ort-cpu", "tensorrt"):
            if k in paths:  # the project's own artifacts, run by OpenVINO as they are
                paths[f"{k}@ov"] = paths[k]
    for k in paths:
        if RUNTIME.get(k) != "openvino":
            build.setdefault(k, {})["ort_cpu_kernels"] = ort_cpu_kernels(paths[k])
    reader.rewind()
    x = reader.get_first()[input_name]
    lat = interleaved_latency(paths, x, input_name, rounds, iters, threads)
    rows = {}
    for k, p in paths.items():
        row: dict[str, Any] = {
            "latency": lat[k]["eval"], "latency_ratio": round(lat[k]["eval"]["p50_ms"] / lat["fp32"]["eval"]["p50_ms"], 4),
            "latency_ort_default": lat[k]["ort_default"],
            "latency_ratio_ort_default": round(lat[k]["ort_default"]["p50_ms"] / lat["fp32"]["ort_default"]["p50_ms"], 4),
            "build": build.get(k, {}), "runtime": RUNTIME.get(k, "onnxruntime")}
        if m["images"] is not None:
            met = evaluate_model(p, DataSpec(m["images"], m["annotations"]), io_model=model,
                                 settings=EvalSettings(providers=["cpu"], threads=threads,
                                                       runtime=RUNTIME.get(k, "onnxruntime")))
            row.update({"map50_95": met["map50_95"], "map50": met["map50"], "images": met["images"]})
        rows[k] = row
    if m["images"] is not None:
        for k, r in rows.items():
            r["map_delta_points"] = round((r["map50_95"] - rows["fp32"]["map50_95"]) * 100, 3)
    trt = tensorrt_timing(model, paths["tensorrt"], x, input_name) if "tensorrt" in paths else \
        {"ran": False, "reason": "the tensorrt variant was not built in this run"}
    return {"model": m["name"], "path": str(model), "input_shape": list(shape), "calib_images": len(files),
            "variants": rows, "tensorrt_engines": trt}


def criteria(r: dict[str, Any]) -> dict[str, Any] | None:
    """Issue #15's test, on this run's figures: the project's fastest CPU target within 0.5 point of
    FP32 (ort-cpu on ORT, openvino on OpenVINO), its latency against the peer's (NNCF + OpenVINO) in
    the same rounds, and against ORT FP32."""
    v = r["variants"]
    if "nncf-ov" not in v or "map_delta_points" not in v["fp32"]:
        return None
    ok = {k: v[k] for k in ("ort-cpu", "openvino") if k in v and v[k]["map_delta_points"] >= -0.5}
    if not ok:
        return {"best": None, "line": "no project CPU target within 0.5 point of FP32"}
    best = min(ok, key=lambda k: ok[k]["latency"]["p50_ms"])
    vs_peer = round(ok[best]["latency"]["p50_ms"] / v["nncf-ov"]["latency"]["p50_ms"], 3)
    return {"best": best, "delta_points": ok[best]["map_delta_points"], "vs_peer": vs_peer,
            "vs_ort_fp32": ok[best]["latency_ratio"], "peer_delta_points": v["nncf-ov"]["map_delta_points"],
            "line": f"best CPU target within 0.5 pt: {best} ({ok[best]['map_delta_points']:+.2f} pt), latency "
                    f"x{vs_peer:.3f} of the peer's (peer {v['nncf-ov']['map_delta_points']:+.2f} pt), "
                    f"x{ok[best]['latency_ratio']:.3f} of ORT FP32"}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """mAP50-95 against latency (PNG, Pillow); random-weight models get a latency strip instead."""
    from PIL import Image, ImageDraw

    colours = {"fp32": "#2c3e50", "tensorrt": "#c0392b", "ort-cpu": "#27ae60", "ort-cpu-modelopt-scales": "#8e44ad",
               "peer": "#2980b9", "peer-u8": "#d35400", "ov-fp32": "#7f8c8d", "nncf-ov": "#16a085",
               "ort-cpu@ov": "#2ecc71", "tensorrt@ov": "#e74c3c", "openvino": "#f39c12"}
    panels = results
    w, h, pad = 520, 360, 50
    img = Image.new("RGB", (w * max(len(panels), 1), h + 40), "white")
    d = ImageDraw.Draw(img)
    for j, r in enumerate(panels):
        x0 = j * w
        v = r["variants"]
        lats = [x["latency"]["p50_ms"] for x in v.values()]
        has_map = all("map50_95" in x for x in v.values())
        # timing-only panels spread the points vertically so their labels stay readable
        maps = [x["map50_95"] for x in v.values()] if has_map else list(np.linspace(0.8, 0.2, len(v)))
        lx0, lx1 = 0.0, max(lats) * 1.15
        my0, my1 = (min(maps) - 0.02, max(maps) + 0.02) if has_map else (0.0, 1.0)
        d.text((x0 + pad, 8), f"{r['model']} ({'x'.join(map(str, r['input_shape'][2:]))})", fill="black")
        d.rectangle([x0 + pad, 30, x0 + w - 15, h - pad + 30], outline="#999999")
        d.text((x0 + pad, h - pad + 36), f"latency p50 ms (0 .. {lx1:.0f}), ORT CPU EP or OpenVINO (@ov), evaluator "
                                         "session", fill="black")
        placed: list[tuple[float, float, float, float]] = []
        d.text((x0 + 4, 34), f"{my1:.3f}" if has_map else "", fill="black")
        d.text((x0 + 4, 50), "mAP50-95" if has_map else "", fill="#666666")
        d.text((x0 + 4, h - pad + 20), f"{my0:.3f}" if has_map else "timing only", fill="black")
        for (k, x), lat, mp in zip(v.items(), lats, maps):
            px = x0 + pad + (lat - lx0) / (lx1 - lx0) * (w - pad - 15)
            py = 30 + (1 - (mp - my0) / (my1 - my0)) * (h - pad)
            d.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colours.get(k, "black"))
            label = {"ort-cpu-modelopt-scales": "ort-cpu, MO scales"}.get(k, k)
            text = f"{label} x{x['latency_ratio']:.2f}"
            # neighbours' labels apart: peer-u8 sits close to the ort-cpu variants, so its label goes left
            tx = px - 7 - d.textlength(text) if k == "peer-u8" else px + 7
            ty = py + (4 if k == "ort-cpu-modelopt-scales" else -6)
            for _ in range(8):  # move a label down until it clears the ones already drawn
                box = (tx, ty, tx + d.textlength(text), ty + 11)
                if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                    break
                ty += 11
            placed.append((tx, ty, tx + d.textlength(text), ty + 11))
            d.text((tx, ty), text, fill=colours.get(k, "black"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,yolov5n,yolov10m-random")
    ap.add_argument("--variants", default="tensorrt,ort-cpu,peer,peer-u8,openvino",
                    help="besides fp32 (tensorrt needs ModelOpt; openvino adds OpenVINO FP32, the NNCF + OpenVINO "
                         "peer, and the project's models run by OpenVINO)")
    ap.add_argument("--calib-count", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    for m in model_set(args.models.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-targets-") as td:
            t0 = time.perf_counter()
            r = bench_model(m, Path(td), args.calib_count, args.rounds, args.iters, args.threads,
                            args.variants.split(","))
            r["bench_wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(r)
        print(f"\n{r['model']}  ({r['calib_images']} calibration images, {args.rounds}x{args.iters} timed runs each)")
        print(f"{'':44}{'evaluator session':>18}{'ORT defaults':>18}")
        print(f"{'variant':24}{'mAP50-95':>10}{'delta pt':>10}{'p50 ms':>9}{'vs FP32':>9}{'p50 ms':>9}{'vs FP32':>9}"
              f"  integer convs")
        for k, v in r["variants"].items():
            kern = v["build"].get("ort_cpu_kernels", {})
            ovc = v["build"].get("openvino_convs")
            print(f"{k:24}{v.get('map50_95', float('nan')):>10.4f}{v.get('map_delta_points', float('nan')):>10.2f}"
                  f"{v['latency']['p50_ms']:>9.2f}{v['latency_ratio']:>9.3f}"
                  f"{v['latency_ort_default']['p50_ms']:>9.2f}{v['latency_ratio_ort_default']:>9.3f}"
                  + (f"  {ovc['int8_convs']} of {ovc['convs']} on OpenVINO integer kernels" if ovc else
                     f"  {kern.get('QLinearConv', 0)} QLinearConv, {kern.get('Conv', 0)} Conv"))
        verdict = criteria(r)
        if verdict:
            print(verdict["line"])
            r["criteria"] = verdict
        t = r["tensorrt_engines"]
        print("TensorRT: " + (f"INT8 {t['int8_p50_ms']} ms vs FP16 {t['fp16_p50_ms']} ms" if t.get("ran")
                              else f"skipped: {t['reason']}"))
    import onnxruntime as ort

    from tasks.evaluation.runtime import cpu_info, cpu_label

    try:
        import openvino as ov

        ov_version = ov.get_version()
    except ImportError:
        ov_version = None
    doc = {"ort_version": ort.__version__, "openvino_version": ov_version, "threads": args.threads,
           "rounds": args.rounds, "iters": args.iters, "cpu": cpu_info(), "cpu_label": cpu_label(),
           "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / ".targets.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(args.out / "targets.json")
    plot(results, args.out / "targets.png")
    print(f"\nCPU: {doc['cpu_label']}; ORT {doc['ort_version']}, OpenVINO {doc['openvino_version']}")
    print(f"wrote {args.out / 'targets.json'} and {args.out / 'targets.png'}")


if __name__ == "__main__":
    main()
