"""The `tensorrt` artifact with INT8 weights (ModelOpt's dq_only, the default) against FP32 weights
behind Q/DQ pairs: file size, mAP on ONNX Runtime, and the largest output difference (issue #16).

    .venv/bin/python bench/dq_only.py                      # demo + ../shared's YOLOv10s and YOLOv5n
    .venv/bin/python bench/dq_only.py --models yolov10s

Both runs of a model share one cache, so they differ only in the last step that writes the artifact.
Prints a table and writes bench/results/dq-only.json (with the CPU the latencies came from).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from accuracy import model_args  # noqa: E402
from tasks.quantization.calibration import open_samples  # noqa: E402
from tasks.config import RunConfig  # noqa: E402
from tasks.evaluation.runtime import cpu_info, cpu_label  # noqa: E402
from tasks.pipeline import run_int8  # noqa: E402

OUT = ROOT / "bench" / "results"


def _outputs(path: str, samples: Any) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: np.asarray(samples[i:i + 1])})[0] for i in range(min(4, len(samples)))]


def bench_model(name: str, base: dict[str, Any], root: Path) -> dict[str, Any]:
    shutil.rmtree(root, ignore_errors=True)
    rows: dict[str, Any] = {}
    outs: dict[str, list[np.ndarray]] = {}
    for label, dq_only in (("qdq", False), ("dq_only", True)):
        cfg = RunConfig.model_validate({**base, "targets": ["tensorrt"], "run_root": str(root), "run_id": label,
                                        "max_map_drop": None, "quant": {"dq_only": dq_only},
                                        "eval": {"providers": ["cpu"]}})
        s = run_int8(cfg)
        t = s.get("targets", {}).get("tensorrt", s)  # one target: its figures are the summary's own
        q = t["quantization"]
        rows[label] = {"size_bytes": q["size_bytes"], "map50_95": t["int8"]["map50_95"], "map50": t["int8"]["map50"],
                       "latency_ratio": t["delta"]["latency_ratio"], "detections": t["int8"]["detections"],
                       "weights_int8": (q["recovery"].get("dq_only") or {}).get("weights_int8", 0),
                       "sha256": q["sha256"]}
        rows["fp32"] = {"size_bytes": s["model"]["size_bytes"], "map50_95": s["fp32"]["map50_95"]}
        calib = json.loads((Path(s["run_dir"]) / "quantize-int8" / "calibration.json").read_text())
        samples = open_samples(Path(calib["tensor_path"]), "images")
        outs[label] = _outputs(q["onnx"], samples)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(outs["qdq"], outs["dq_only"]))
    return {**rows, "max_abs_output_diff": diff,
            "map_equal": rows["qdq"]["map50_95"] == rows["dq_only"]["map50_95"],
            "size_ratio": round(rows["dq_only"]["size_bytes"] / rows["qdq"]["size_bytes"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,yolov10s,yolov5n")
    ap.add_argument("--work", type=Path, default=ROOT / "tmp" / "bench-dq-only")
    a = ap.parse_args()
    result: dict[str, Any] = {"cpu": cpu_label(), "cpu_info": cpu_info(), "models": {}}
    mib = 1 << 20
    print(f"{'model':<10} {'FP32 MiB':>9} {'Q/DQ MiB':>9} {'dq_only MiB':>12} {'mAP Q/DQ':>9} {'mAP dq_only':>12} "
          f"{'max |diff|':>11}")
    for name in [m.strip() for m in a.models.split(",") if m.strip()]:
        base = model_args(name, None)
        if base is None:
            continue
        r = bench_model(name, base, a.work / name)
        result["models"][name] = r
        print(f"{name:<10} {r['fp32']['size_bytes'] / mib:>9.2f} {r['qdq']['size_bytes'] / mib:>9.2f} "
              f"{r['dq_only']['size_bytes'] / mib:>12.2f} {r['qdq']['map50_95']:>9.4f} {r['dq_only']['map50_95']:>12.4f} "
              f"{r['max_abs_output_diff']:>11.3g}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dq-only.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"CPU: {result['cpu']}; mAP50-95 on ONNX Runtime's CPU EP")
    print(f"wrote {OUT / 'dq-only.json'}")


if __name__ == "__main__":
    main()
