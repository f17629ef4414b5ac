"""Seconds per image for preprocessing, inference and decoding on the real 79-image COCO run.

    .venv/bin/python bench/eval_phases.py [--model M.onnx --images DIR --annotations JSON]

Prints the three phases and the share of (preprocessing + decoding) in inference time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared_data import YOLOV5N  # noqa: E402
from tasks.evaluation.evaluate import EvalSettings, evaluate_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=YOLOV5N["model"], type=Path)
    ap.add_argument("--images", default=YOLOV5N["images"], type=Path)
    ap.add_argument("--annotations", default=YOLOV5N["annotations"],
                    type=Path)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if not a.model.exists():
        sys.exit(f"{a.model} is absent: this benchmark reads the real data in ../shared")
    m = evaluate_model(a.model, a.images, a.annotations, settings=EvalSettings(providers=["cpu"], threads=a.threads))
    pre, inf, dec = (m[k]["mean"] for k in ("preprocess_ms", "latency_ms", "decode_ms"))
    row = {"model": a.model.name, "images": m["images"], "provider": m["provider"], "threads": m["runtime"]["threads"],
           "preprocess_s_per_image": round(pre / 1000, 5), "inference_s_per_image": round(inf / 1000, 5),
           "decode_s_per_image": round(dec / 1000, 5), "pre_plus_decode_share_of_inference": round((pre + dec) / inf, 4),
           "map50_95": m["map50_95"], "device": m["runtime"]["device"]}
    print(f"{row['model']} on {row['images']} images, {row['provider']}, {row['threads']} threads ({row['device']})")
    print(f"  preprocessing {pre / 1000:.4f} s/image   (mean {pre:.2f} ms)")
    print(f"  inference     {inf / 1000:.4f} s/image   (mean {inf:.2f} ms, p50 {m['latency_ms']['p50']:.2f} ms)")
    print(f"  decoding      {dec / 1000:.4f} s/image   (mean {dec:.2f} ms)")
    print(f"  (preprocessing + decoding) / inference = {row['pre_plus_decode_share_of_inference'] * 100:.1f}%")
    if a.out:
        a.out.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
