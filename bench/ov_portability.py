"""Does an INT8 model run correctly on OpenVINO whatever kernels the CPU gives it? (issue #15)

OpenVINO's CPU plugin picks its oneDNN kernels by the CPU's instruction sets: AMX, AVX512-VNNI,
AVX2-VNNI or plain AVX2 (the CPUs this project's machines have had). ONEDNN_MAX_CPU_ISA caps that
choice, so one machine can run a model on each kernel family in turn. Each model is evaluated on the
79 COCO images of ../shared in a fresh process per cap:

- `openvino`: the flow's openvino target (NNCF, tasks/targets/openvino.py);
- `tensorrt`: the flow's tensorrt artifact (ModelOpt Q/DQ, int8 activations with zero point 0,
  INT8 weights), run by OpenVINO as it is;
- `tensorrt-u8`: the same with every int8 activation zero point rewritten to the equivalent uint8
  (+128; the same values on ONNX Runtime, checked here), the rewrite issue #15 tried on a Zen 5.

    .venv/bin/python bench/ov_portability.py                      # yolov5n, yolov10s
    .venv/bin/python bench/ov_portability.py --models yolov5n --isas native,AVX2

Prints a table and writes bench/results/ov-portability.json (with the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared_data import SHARED, YOLOV5N, YOLOV10S  # noqa: E402

OUT = ROOT / "bench" / "results"
MODELS = {"yolov5n": YOLOV5N["model"], "yolov10s": YOLOV10S["model"]}
DATA = SHARED / "data"


def u8_zero_points(src: Path, dst: Path) -> int:
    """Every QuantizeLinear with an int8 zero point, and the DequantizeLinear(s) reading it, moved to
    uint8 with zero point +128: q' = q + 128 exactly (saturation bounds move with it), and
    (q' - zp') * s = (q - zp) * s. Weights (DequantizeLinear on an initializer) stay int8."""
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.load(str(src))
    inits = {i.name: i for i in m.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    new, count = [], 0
    for n in m.graph.node:
        zp = inits.get(n.input[2]) if n.op_type == "QuantizeLinear" and len(n.input) > 2 else None
        if zp is None or zp.data_type != TensorProto.INT8:
            continue
        v = numpy_helper.to_array(zp).astype(np.int16) + 128
        name = f"{n.name}_zero_point_u8"
        new.append(numpy_helper.from_array(v.astype(np.uint8), name))
        n.input[2] = name
        for d in consumers.get(n.output[0], []):
            if d.op_type != "DequantizeLinear":
                raise ValueError(f"{n.name} feeds {d.op_type}, not a DequantizeLinear")
            d.input[2] = name
        count += 1
    m.graph.initializer.extend(new)
    onnx.save(m, str(dst))
    return count


def ort_max_diff(a: Path, b: Path, x: np.ndarray) -> float:
    import onnxruntime as ort

    outs = []
    for p in (a, b):
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        outs.append(s.run(None, {s.get_inputs()[0].name: x})[0])
    return float(np.abs(outs[0] - outs[1]).max())


_CHILD = """
import json, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from tasks.evaluation.evaluate import EvalSettings, evaluate_model
from tasks.evaluation.sources.base import DataSpec
from tasks.quantization.nncf_ptq import runtime_convolutions
out = {{}}
for name, path in {files!r}.items():
    m = evaluate_model(Path(path), DataSpec(Path({images!r}), Path({ann!r})), None, EvalSettings(runtime="openvino"),
                       io_model=Path({model!r}))
    rc = runtime_convolutions(Path(path))
    out[name] = {{"map50_95": m["map50_95"], "p50_ms": m["latency_ms"]["p50"], "kernels": rc["primitives"]}}
print("RESULT " + json.dumps(out))
"""


def evaluate_under(isa: str, files: dict[str, str], model: Path) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa != "native":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    code = _CHILD.format(root=str(ROOT), files=files, images=str(DATA / "coco-val2017-mini/images"),
                         ann=str(DATA / "coco-val2017-mini/annotations/instances_val2017.json"), model=str(model))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"evaluation under {isa} failed: {out.stderr[-2000:]}")
    return json.loads(line[7:])


def build(name: str, model: Path, root: Path) -> dict[str, Any]:
    """The flow's tensorrt and openvino artifacts (one run, its own cache) and the uint8 rewrite."""
    from tasks.config import RunConfig
    from tasks.quantization.calibration import open_samples
    from tasks.pipeline import run_int8

    cfg = RunConfig.model_validate({
        "model": str(model), "calib_images": str(DATA / "coco-val2017-calib/images"),
        "images": str(DATA / "coco-val2017-mini/images"),
        "annotations": str(DATA / "coco-val2017-mini/annotations/instances_val2017.json"),
        "targets": ["tensorrt", "openvino"], "max_map_drop": None, "run_root": str(root), "run_id": "run",
        "eval": {"providers": ["cpu"]}})
    s = run_int8(cfg)
    trt = Path(s["targets"]["tensorrt"]["quantization"]["artifact"])
    u8 = root / f"{name}-tensorrt-u8.onnx"
    rewritten = u8_zero_points(trt, u8)
    import onnx

    calib = json.loads((root / "run" / "quantize-int8" / "calibration.json").read_text())
    samples = open_samples(Path(calib["tensor_path"]), onnx.load(str(model)).graph.input[0].name)
    x = np.asarray(samples[0:1], dtype=np.float32)
    return {"files": {"openvino": s["targets"]["openvino"]["quantization"]["artifact"], "tensorrt": str(trt),
                      "tensorrt-u8": str(u8)},
            "fp32_ort": s["fp32"]["map50_95"], "zero_points_rewritten": rewritten,
            "tensorrt_u8_ort_max_abs_diff": ort_max_diff(trt, u8, x)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="yolov5n,yolov10s")
    ap.add_argument("--isas", default="native,AVX512_CORE_VNNI,AVX2_VNNI,AVX2",
                    help="oneDNN ISA caps (ONEDNN_MAX_CPU_ISA); native = none")
    ap.add_argument("--work", type=Path, default=ROOT / "tmp" / "bench-ov-portability")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    from tasks.evaluation.runtime import cpu_info, cpu_label

    results = []
    for name in args.models.split(","):
        model = MODELS[name]
        if not model.is_file():
            print(f"skip {name}: {model} is absent (../shared)")
            continue
        b = build(name, model, args.work / name)
        row: dict[str, Any] = {"model": name, **b, "isas": {}}
        for isa in args.isas.split(","):
            row["isas"][isa] = evaluate_under(isa, b["files"], model)
        results.append(row)
        print(f"\n{name}: FP32 on ORT {b['fp32_ort']:.4f}; tensorrt-u8: {b['zero_points_rewritten']} zero points "
              f"rewritten, largest output difference on ORT {b['tensorrt_u8_ort_max_abs_diff']:.3g}")
        print(f"{'kernels (ONEDNN_MAX_CPU_ISA)':30}" + "".join(f"{k:>24}" for k in b["files"]))
        for isa, r in row["isas"].items():
            print(f"{isa:30}" + "".join(f"{r[k]['map50_95']:>12.4f} {r[k]['p50_ms']:>7.1f} ms" for k in b["files"]))
        for isa, r in row["isas"].items():
            print(f"  {isa}: " + "; ".join(f"{k}: " + ", ".join(f"{n} {p}" for p, n in r[k]["kernels"].items())
                                          for k in b["files"]))
    import openvino as ov

    doc = {"cpu": cpu_info(), "cpu_label": cpu_label(), "openvino_version": ov.get_version(), "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / ".ov-portability.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(args.out / "ov-portability.json")
    print(f"\nCPU: {doc['cpu_label']}; OpenVINO {doc['openvino_version']}\nwrote {args.out / 'ov-portability.json'}")


if __name__ == "__main__":
    main()
