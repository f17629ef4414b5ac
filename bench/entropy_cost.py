"""Cost of entropy calibration against max, and what each gives.

    .venv/bin/python bench/entropy_cost.py                    # demo model, 64 calibration images
    .venv/bin/python bench/entropy_cost.py --modelopt-entropy # also ModelOpt/ORT's own entropy (slow)
    .venv/bin/python bench/entropy_cost.py --real --modelopt-entropy   # real YOLOv5n, real COCO images

Runs ModelOpt PTQ with max, with the bounded entropy path (max, then fixed 2048-bin histograms and
the KL search, applied through a ModelOpt calibration cache), and optionally ModelOpt's own entropy
calibrator; prints wall time, the ratio to max, mAP50-95 on the demo subset, and checks that the
streamed max scales equal those of ModelOpt's own array input (the path used before streaming).
Writes bench/results/entropy-cost.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared_data import YOLOV5N  # noqa: E402
from tasks.quantization.calibration import CalibReader, build_calib_tensor, pick_calib_images  # noqa: E402
from tasks.config import QuantSettings, load_demo_config  # noqa: E402
from tasks.quantization.entropy import activation_scales  # noqa: E402
from tasks.evaluation.evaluate import EvalSettings, evaluate_model  # noqa: E402
from tasks.evaluation.preprocess import PreprocessSpec  # noqa: E402
from tasks.quantization.quantize import head_final_convs, ort_quantization_restored, run_ptq  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--modelopt-entropy", action="store_true", help="also time ModelOpt's own entropy calibrator")
    ap.add_argument("--real", action="store_true", help="../shared's YOLOv5n on real COCO calibration images")
    ap.add_argument("--calib-images", type=Path, help="calibrate on this folder instead (e.g. real images for the demo)")
    ap.add_argument("--seed", type=int, default=0, help="calibration sample and order seed (as --calib-seed)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    import onnx

    from tasks.evaluation.runtime import model_io

    if args.real:
        model, paths = YOLOV5N["model"], YOLOV5N
    else:
        demo = load_demo_config()
        model, paths = Path(demo["model"]), demo["paths"]
    args.out = args.out or ROOT / "bench" / "results" / f"entropy-cost{'-real' if args.real else ''}.json"
    input_name, shape, _ = model_io(onnx.load(str(model)))
    files = pick_calib_images(Path(args.calib_images or paths["calib_images"]), args.count, seed=args.seed)
    runs = {"max": QuantSettings(calib_eps=["cpu"], method="max"),
            "entropy": QuantSettings(calib_eps=["cpu"], method="entropy")}
    if args.modelopt_entropy:
        runs["entropy-modelopt"] = QuantSettings(calib_eps=["cpu"], method="entropy", entropy_impl="modelopt")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="entropy-cost-") as td:
        for name, st in runs.items():
            reader = CalibReader(files, input_name, input_shape=shape, spec=PreprocessSpec())
            out = Path(td) / f"{name}.onnx"
            rec = run_ptq(model, input_name, reader, st, out, Path(td) / f"{name}.log", seed=args.seed)
            m = evaluate_model(out, paths["images"], paths["annotations"], settings=EvalSettings(providers=["cpu"]))
            rows[name] = {"wall_s": rec["wall_s"], "peak_rss_mib": rec["peak_rss_mib"], "map50_95": m["map50_95"],
                          "entropy": rec["entropy"]}
            print(f"{name:18} {rec['wall_s']:8.1f} s   mAP50-95 {m['map50_95']:.4f}", flush=True)
        # max scales through the streamed reader vs ModelOpt's own array provider (head preset as run_ptq)
        from modelopt.onnx.quantization import quantize

        arr = build_calib_tensor(files, shape, PreprocessSpec())
        src = Path(td) / "copy.onnx"
        src.write_bytes(model.read_bytes())
        excl = [re.escape(n) + "$" for n in head_final_convs(onnx.load(str(model)))]
        with ort_quantization_restored():
            quantize(onnx_path=str(src), calibration_data={input_name: arr}, calibration_method="max",
                     calibration_eps=["cpu"], op_types_to_exclude=["TopK"], nodes_to_exclude=excl,
                     high_precision_dtype="fp32", output_path=str(Path(td) / "array.onnx"))
        a = activation_scales(onnx.load(str(Path(td) / "array.onnx")))
        s = activation_scales(onnx.load(str(Path(td) / "max.onnx")))
        same = a == s
    base = rows["max"]["wall_s"]
    for r in rows.values():
        r["ratio_to_max"] = round(r["wall_s"] / base, 3)
    print(f"\nentropy / max = {rows['entropy']['ratio_to_max']:.2f}"
          + (f"; ModelOpt's own entropy / max = {rows['entropy-modelopt']['ratio_to_max']:.1f}"
             if "entropy-modelopt" in rows else ""))
    print(f"max scales, streamed reader vs array input: {'identical' if same else 'DIFFERENT'} ({len(s)} tensors)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps({"model": str(model), "calib_images": len(files), "calib_folder": str(files[0].parent),
                               "seed": args.seed, "runs": rows,
                               "max_scales_identical_to_array_path": same}, indent=2))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
