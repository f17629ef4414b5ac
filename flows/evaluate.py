"""COCO mAP and latency of any YOLO ONNX export on ONNX Runtime.

    python flows/evaluate.py --model M.onnx --images DIR --annotations JSON [--subset FILE|N|random:N]
                             [--providers cuda,cpu] [--out metrics.json]
    python flows/evaluate.py --model M.onnx --data DATA.yaml [--split val|test]   # an Ultralytics dataset

Prints a short table and writes the metrics JSON. With --prefect it runs as a Prefect flow (a
temporary local server unless PREFECT_API_URL points at one); without, it runs the plain function.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    from flows.common import ensure_prefect_home, offline_defaults
except ModuleNotFoundError:  # run as `python flows/evaluate.py`
    from common import ensure_prefect_home, offline_defaults

offline_defaults()

from tasks.evaluation.evaluate import EvalSettings, evaluate_model, format_table  # noqa: E402
from tasks.evaluation.preprocess import PreprocessSpec  # noqa: E402
from tasks.evaluation.sources.base import DataSpec  # noqa: E402
from tasks.run.rundir import atomic_write_json  # noqa: E402


def evaluate_flow(model: str, source: DataSpec, subset: str | None = None,
                  settings: EvalSettings = EvalSettings(), out: str | None = None, io_model: str | None = None) -> dict:
    """Prefect flow wrapper around tasks.evaluation.evaluate.evaluate_model (built lazily: Prefect is only
    imported when asked for)."""
    from prefect import flow, task

    @task(name="coco-eval", retries=1)
    def _eval() -> dict:
        return evaluate_model(Path(model), source, subset, settings,
                              io_model=Path(io_model) if io_model else None)

    @flow(name="yolo-evaluate")
    def _flow() -> dict:
        return _eval()

    metrics = _flow()
    if out:
        atomic_write_json(Path(out), metrics)
    return metrics


def main(argv: list[str] | None = None, prog: str = "python flows/evaluate.py") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.replace("python flows/evaluate.py", prog),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", help="folder of the evaluated images (with --annotations)")
    ap.add_argument("--annotations", help="COCO instances JSON describing them")
    ap.add_argument("--data", help="or an Ultralytics dataset YAML (path, train, val, test, names; YOLO labels)")
    ap.add_argument("--split", choices=["val", "test"], default="val", help="with --data: the split evaluated")
    ap.add_argument("--subset", help="N (first N ids), random:N (seeded), or a file of image ids / file names")
    ap.add_argument("--subset-seed", type=int, default=0)
    ap.add_argument("--providers", default="cuda,cpu", help="priority order; CPU is always the fallback")
    ap.add_argument("--strict-providers", action="store_true", help="fail if a requested provider is unusable")
    ap.add_argument("--output-format", default="auto", choices=["auto", "yolov10", "yolov8", "yolov5"])
    ap.add_argument("--conf", type=float, default=0.001)
    ap.add_argument("--iou", type=float, default=0.65)
    ap.add_argument("--max-det", type=int, default=300)
    ap.add_argument("--class-map", help="comma-separated category id per class index")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runtime", choices=["onnxruntime", "openvino"], default="onnxruntime",
                    help="what runs the model (openvino: its CPU plugin, f32 precision for float layers)")
    ap.add_argument("--io-model", help="an OpenVINO IR (.xml, with --runtime openvino): the ONNX export it was made "
                                       "from, whose input, output and class names describe it")
    ap.add_argument("--imgsz", type=int, nargs="+", help="H W (or one size) to run a dynamic-shape export at "
                                                        "(default: its imgsz metadata)")
    ap.add_argument("--pad-value", type=int, default=114)
    ap.add_argument("--no-center", action="store_true", help="pad right/bottom only")
    ap.add_argument("--bgr", action="store_true", help="the export expects BGR input")
    ap.add_argument("--out", help="metrics JSON to write (default: print only)")
    ap.add_argument("--prefect", action="store_true", help="run as a Prefect flow")
    a = ap.parse_args(argv)
    if a.data and (a.images or a.annotations):
        ap.error("give --data, or --images and --annotations, not both")
    if not a.data and not (a.images and a.annotations):
        ap.error("the evaluated data: --data DATA.yaml, or --images DIR and --annotations JSON")
    source = DataSpec(data=a.data, split=a.split) if a.data else DataSpec(images=a.images, annotations=a.annotations)
    try:
        if Path(a.model).suffix == ".xml" and (a.runtime != "openvino" or not a.io_model):
            raise ValueError(f"{a.model} is an OpenVINO IR: evaluate it with --runtime openvino --io-model "
                             f"THE_ONNX_EXPORT_IT_WAS_MADE_FROM")
        settings = EvalSettings(
            output_format=a.output_format, conf_thres=a.conf, iou_thres=a.iou, max_det=a.max_det,
            class_map=[int(x) for x in a.class_map.split(",")] if a.class_map else None,
            providers=[p for p in a.providers.split(",") if p], strict_providers=a.strict_providers,
            runtime=a.runtime,
            threads=a.threads, warmup=a.warmup, imgsz=a.imgsz,
            preprocess=PreprocessSpec(pad_value=a.pad_value, center=not a.no_center,
                                      channel_order="BGR" if a.bgr else "RGB"))
        if a.prefect:
            ensure_prefect_home()
            metrics = evaluate_flow(a.model, source, a.subset, settings, a.out, a.io_model)
        else:
            metrics = evaluate_model(Path(a.model), source, a.subset, settings,
                                     a.subset_seed, io_model=Path(a.io_model) if a.io_model else None)
            if a.out:
                atomic_write_json(Path(a.out), metrics)
    except (ValueError, OSError, RuntimeError) as e:  # OSError: a folder given for a file, and the reverse, too
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table({Path(a.model).stem[:10]: metrics}))
    print(f"classes: {metrics['classes']['note']}")
    print(f"detections {metrics['detections']}, decoder {metrics['model']['output_format']}, "
          f"preprocess p50 {metrics['preprocess_ms']['p50']:.2f} ms, decode p50 {metrics['decode_ms']['p50']:.2f} ms")
    if a.out:
        print(f"metrics: {a.out}")
    else:
        print(json.dumps({k: metrics[k] for k in ("map50_95", "map50", "images", "provider", "latency_ms")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
