"""Where an INT8 Q/DQ model's accuracy goes: weights or activations.

    .venv/bin/python bench/loss_split.py --run tmp/bench-accuracy/yolov5n/plain/run
    .venv/bin/python bench/loss_split.py --run tmp/bench-accuracy/yolov5n/plain/run --target ort-cpu
    .venv/bin/python bench/loss_split.py --run RUN_DIR --images DIR --annotations JSON

From a finished run's `tensorrt` (or `ort-cpu`) model (INT8 weights behind a DequantizeLinear,
activation Q/DQ pairs; the run's FP32 export beside it) two models are built and evaluated on the run's images:
`weights only` (every activation Q/DQ pair removed: only the weights' rounding remains) and
`activations only` (every weight put back to its FP32 value: only the activation ranges remain).
Two more split the activations' part into clipping and resolution: `activations, no clipping` (each
activation pair widened to 16 bits at the same step: the rounding stays, nothing is clipped) and
`activations, half step` (16 bits at half the step: what one more bit would give). If the first is
near `activations only`, no choice of range can recover the loss: the 8-bit grid itself costs it.
Each INT8 delta against FP32 is printed with its paired 95% interval, beside the whole INT8 model's
(bench/results/loss-split.json; loss-split-ort-cpu.json for `--target ort-cpu`). Recovery's corrected biases stay in all, so the parts need not
add up to the whole.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.config import RunConfig  # noqa: E402
from tasks.evaluation.bootstrap import paired_interval  # noqa: E402
from tasks.evaluation.evaluate import evaluate_model  # noqa: E402
from tasks.evaluation.runtime import cpu_info, cpu_label  # noqa: E402
from tasks.evaluation.sources.base import DataSpec  # noqa: E402
from tasks.quantization.graph import producer_map  # noqa: E402

OUT = ROOT / "bench" / "results" / "loss-split.json"


def _rewire(graph: onnx.GraphProto, rename: dict[str, str], drop: set[str]) -> None:
    """Consumers read `rename[x]` for x; dropped nodes and whatever only fed them are removed."""
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    keep = [n for n in graph.node if n.name not in drop]
    while True:
        used = {i for n in keep for i in n.input} | {o.name for o in graph.output}
        live = [n for n in keep if any(o in used for o in n.output)]
        if len(live) == len(keep):
            break
        keep = live
    del graph.node[:]
    graph.node.extend(keep)


def _activation_pairs(m: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    inits = {i.name for i in m.graph.initializer}
    prod = producer_map(m)
    pairs = []
    for n in m.graph.node:
        p = prod.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if p is not None and p.op_type == "QuantizeLinear" and p.input[0] not in inits:
            pairs.append((p, n))
    return pairs


def weights_only(q: onnx.ModelProto) -> onnx.ModelProto:
    """Every activation QuantizeLinear -> DequantizeLinear pair bypassed (weights are stored INT8 with a
    DequantizeLinear only, so they stay quantized)."""
    m = onnx.ModelProto()
    m.CopyFrom(q)
    pairs = _activation_pairs(m)
    _rewire(m.graph, {dq.output[0]: qn.input[0] for qn, dq in pairs}, {dq.name for _, dq in pairs})
    return m


def activations_only(q: onnx.ModelProto, fp32: onnx.ModelProto) -> onnx.ModelProto:
    """Every stored INT8 weight replaced by the FP32 export's weight of the same node (matched by node
    name), so only the activations stay quantized."""
    m = onnx.ModelProto()
    m.CopyFrom(q)
    fp_init = {i.name: i for i in fp32.graph.initializer}
    fp_weight = {n.name: fp_init[n.input[1]] for n in fp32.graph.node
                 if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in fp_init}
    inits = {i.name for i in m.graph.initializer}
    dq_of = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    rename, drop = {}, set()
    for n in m.graph.node:
        if n.name in fp_weight and len(n.input) > 1 and n.input[1] in dq_of:
            w = onnx.TensorProto()
            w.CopyFrom(fp_weight[n.name])
            w.name = n.input[1] + "_fp32"
            m.graph.initializer.append(w)
            rename[n.input[1]] = w.name
            drop.add(dq_of[n.input[1]].name)
    _rewire(m.graph, rename, drop)
    return m


def widened(q: onnx.ModelProto, step: float) -> onnx.ModelProto:
    """Every activation Q/DQ pair made 16-bit with its scale times `step` (zero point kept): at step 1
    the grid is the same but nothing is clipped; at 0.5 it is one bit finer. ONNX's own Q/DQ take
    int16 only from opset 21, so the pairs move to ORT's com.microsoft Q/DQ, which take it at any opset."""
    m = onnx.ModelProto()
    m.CopyFrom(q)
    init = {i.name: i for i in m.graph.initializer}
    for k, (qn, dq) in enumerate(_activation_pairs(m)):
        if qn.input[1] not in init or (len(qn.input) > 2 and qn.input[2] and qn.input[2] not in init):
            raise ValueError(f"{qn.name}: its scale or zero point is not an initializer")
        scale = numpy_helper.to_array(init[qn.input[1]]).astype(np.float32) * np.float32(step)
        zp = (numpy_helper.to_array(init[qn.input[2]]) if len(qn.input) > 2 and qn.input[2]
              else np.zeros(scale.shape, np.int8)).astype(np.int16)  # a uint8 zero point keeps its value
        names = (f"{qn.name}_wide_scale_{k}", f"{qn.name}_wide_zp_{k}")
        m.graph.initializer.extend([numpy_helper.from_array(scale, names[0]), numpy_helper.from_array(zp, names[1])])
        for node in (qn, dq):
            del node.input[1:]
            node.input.extend(names)
            node.domain = "com.microsoft"
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished run folder with a tensorrt or ort-cpu model")
    ap.add_argument("--target", choices=("tensorrt", "ort-cpu"), default="tensorrt",
                    help="whose model to split (openvino's is an IR, not a Q/DQ ONNX model)")
    ap.add_argument("--images", type=Path, help="default: the run's")
    ap.add_argument("--annotations", type=Path, help="default: the run's")
    ap.add_argument("--out", type=Path, help="default: bench/results/loss-split.json (tensorrt), "
                                                "loss-split-ort-cpu.json (ort-cpu)")
    a = ap.parse_args()
    for need in ("run-config.json", "results/summary.json"):
        if not (a.run / need).is_file():
            ap.error(f"{a.run}: no {need}; give --run the folder of a finished run (it prints 'run folder: ...')")
    cfg = RunConfig.model_validate(json.loads((a.run / "run-config.json").read_text()))
    s = json.loads((a.run / "results" / "summary.json").read_text())
    # one target: summary.json names it in quantization.target; several: under targets
    quant = s["targets"].get(a.target, {}).get("quantization") if "targets" in s else \
        (s["quantization"] if s["quantization"].get("target", "tensorrt") == a.target else None)
    q_path = Path(quant["onnx"]) if quant else None
    if q_path is None or not q_path.exists():
        ap.error(f"{a.run}: no {a.target} model in its summary (run it with --target {a.target})")
    out_path = a.out or (OUT if a.target == "tensorrt" else OUT.with_name(f"loss-split-{a.target}.json"))
    images = a.images or cfg.images or cfg.data
    source = DataSpec(a.images, a.annotations) if a.images and a.annotations else cfg.eval_data()
    settings = cfg.eval.model_copy(update={"providers": ["cpu"]})
    q, fp = onnx.load(str(q_path)), onnx.load(str(cfg.model))
    out: dict[str, Any] = {"cpu": cpu_label(), "cpu_info": cpu_info(), "run": str(a.run), "target": a.target,
                           "model": str(cfg.model),
                           "images": str(images), "rows": {}}
    with tempfile.TemporaryDirectory() as td:
        paths = {"fp32": Path(cfg.model), "int8": q_path}
        act = activations_only(q, fp)
        for name, m in (("weights only", weights_only(q)), ("activations only", act),
                        ("activations, no clipping", widened(act, 1.0)), ("activations, half step", widened(act, 0.5))):
            paths[name] = Path(td) / f"{name.replace(' ', '-')}.onnx"
            onnx.save(m, str(paths[name]))
        metrics = {k: evaluate_model(p, source, cfg.subset, settings) for k, p in paths.items()}
    base = metrics["fp32"]
    print(f"CPU: {out['cpu']}; {a.target}; {len(base['image_ids'])} images; FP32 mAP50-95 {base['map50_95']:.4f}; INT8 minus FP32 in points, 95% CI")
    for k in ("int8", "weights only", "activations only", "activations, no clipping", "activations, half step"):
        ci = paired_interval(base["bootstrap"], metrics[k]["bootstrap"], "map50_95")
        d = (metrics[k]["map50_95"] - base["map50_95"]) * 100
        out["rows"][k] = {"map50_95": metrics[k]["map50_95"], "delta_pt": round(d, 3),
                          "ci_pt": None if ci is None else [round(x * 100, 2) for x in ci]}
        print(f"  {k:25s} {metrics[k]['map50_95']:.4f}  {d:+.2f}" + (f" [{ci[0] * 100:+.2f}, {ci[1] * 100:+.2f}]" if ci else ""))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2))
    print(f"written {out_path}")


if __name__ == "__main__":
    main()
