"""Measure the demo model with the project's own evaluator and write its model card.

    .venv/bin/python scripts/write_model_card.py

Writes demo/model/MODEL_CARD.md and demo/model/reference.json (the FP32 figures the test suite
compares against, NNCF-style, with a tolerance).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.config import load_demo_config  # noqa: E402
from tasks.demo_data import CATEGORIES  # noqa: E402
from tasks.evaluation.evaluate import EvalSettings, evaluate_model  # noqa: E402
from tasks.evaluation.sources.base import DataSpec  # noqa: E402
from tasks.run.rundir import atomic_write_json, atomic_write_text, sha256_file  # noqa: E402


def main() -> None:
    demo = load_demo_config()
    model: Path = demo["model"]
    info = json.loads((model.parent / "train-info.json").read_text())
    stage1 = info.get("previous_stage") or info
    m = evaluate_model(model, DataSpec(demo["paths"]["images"], demo["paths"]["annotations"]),
                       settings=EvalSettings(providers=["cpu"]))
    ref = {"model": model.name, "sha256": sha256_file(model), "map50_95": m["map50_95"], "map50": m["map50"],
           "images": m["images"], "tolerance": 0.002,
           "data": {"seed": demo["data"]["seed"], "val_images": demo["data"]["val_images"]}}
    atomic_write_json(model.parent / "reference.json", ref)
    size_mb = model.stat().st_size / 2**20
    classes = ", ".join(f"{i}: {c['name']} (category id {c['id']})" for i, c in enumerate(CATEGORIES))
    per_class = "\n".join(f"| {k} | {v:.3f} |" for k, v in m["per_class_ap"].items())
    card = f"""# Model card: {model.name}

A YOLOv10n (Ultralytics' `yolov10n.yaml`: the real end-to-end `v10Detect` head) trained from scratch,
in two stages, on the synthetic shapes dataset of `tasks/demo_data.py` (the `standard` profile it is
evaluated on gives each class a hue band, varied within it, besides its shape; stage 1 used the
`hard` profile, any hue, darker, smaller and noisier objects). It exists so that the demo runs the real job
(a real YOLOv10 graph, NMS-free 1x300x6 output, TopK post-processing) on a fresh machine with no download.

| | |
|---|---|
| training, stage 1 | `{stage1['command']}`: from scratch (`yolov10n.yaml`), {stage1['train_images']} images of the `hard` scene profile, {stage1['epochs']} epochs with mosaic, {stage1['train_seconds'] / 60:.0f} min |
| training, stage 2 | `{info['command']}`: from stage 1's weights, {info['train_images']} images of the `standard` profile (the evaluated distribution), {info['epochs']} epochs without mosaic, {info['train_seconds'] / 60:.0f} min |
| environment | `YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false`, `../venv-train` (see the script's docstring): torch {info['torch']}, ultralytics {info['ultralytics']}, {info['threads']} CPU threads |
| seed | {info['seed']} (data and training) |
| input | `{m['model']['input']}` float32 {m['model']['input_shape']} (letterbox to {info['imgsz']}, pad 114, RGB, /255) |
| output | `{m['model']['output']}` {m['model']['output_shape']} = x1, y1, x2, y2, score, class (decoder `{m['model']['output_format']}`, chosen automatically) |
| classes | {classes} |
| ONNX | opset 17, static batch 1, {size_mb:.2f} MiB, sha256 `{ref['sha256']}` |
| licence | weights trained here; Ultralytics (AGPL-3.0) was used as a development tool only |

## FP32 accuracy (project evaluator, ONNX Runtime CPU)

`python flows/evaluate.py --model demo/model/{model.name} --images tmp/demo-data/val/images --annotations tmp/demo-data/val/annotations.json`

on the {m['images']}-image evaluation split (seed {demo['data']['seed']}): **mAP50-95 {m['map50_95']:.3f}, mAP50 {m['map50']:.3f}**
({m['detections']} detections, {m['gt_boxes']} ground-truth boxes).

| class | AP50-95 |
|---|---:|
{per_class}
"""
    atomic_write_text(model.parent / "MODEL_CARD.md", card)
    print(f"mAP50-95 {m['map50_95']:.4f} mAP50 {m['map50']:.4f} on {m['images']} images; card written")


if __name__ == "__main__":
    main()
