"""Where the benchmarks find ../shared's real data (the COCO-trained YOLOv5n and its images).

CI and developers have ../shared beside the repository; a copy elsewhere (another machine) is named
by YOLO_LOWBIT_SHARED. Benchmark scripts run from bench/, so they import this module directly.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(os.environ.get("YOLO_LOWBIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))

# the real COCO-trained YOLOv5n: its model, the calibration images and the 79-image evaluation subset
YOLOV5N = {
    "model": SHARED / "models/yolov5n-coco/yolov5n.onnx",
    "calib_images": SHARED / "data/coco-val2017-calib/images",
    "images": SHARED / "data/coco-val2017-mini/images",
    "annotations": SHARED / "data/coco-val2017-mini/annotations/instances_val2017.json",
}

# the real COCO-trained YOLOv10s (the YOLOv10 family of the flow's default model), same images
YOLOV10S = {**YOLOV5N, "model": SHARED / "models/yolov10s-coco/yolov10s.onnx"}
