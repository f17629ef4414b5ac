"""Train and export the bundled demo detectors (development-time only).

A YOLOv10n (Ultralytics' real end-to-end v10Detect head) trained on the synthetic shapes dataset,
exported to a static ONNX whose output is the NMS-free 1x300x6 tensor, like the user's yolov10m.
With `--arch yolo26n.yaml --exports end2end,raw` the same for YOLO26n, in both of its export forms:
`nms=False` (its one-to-one head, top-K baked in: 1x300x6, metadata end2end True) and the default
(its one-to-many head, 1x(4+nc)xN, no DFL, metadata end2end False: NMS after the model).

Ultralytics is AGPL and a development tool here, never a runtime dependency. It lives in its own
environment (torch 2.14.1 + torchvision 0.29.1, which lie on this machine's disk):

    python3 -m venv ../venv-train
    ../venv-train/bin/pip install torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190 onnx onnxslim
    YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false ../venv-train/bin/python scripts/train_demo_model.py

It writes demo/model/yolov10n-shapes.onnx; scripts/write_model_card.py then measures it with the
project's own evaluator and writes demo/model/MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.demo_data import CATEGORIES, write_split  # noqa: E402


def coco_to_yolo(ann_path: Path, label_dir: Path) -> None:
    """Ultralytics reads one txt per image: class cx cy w h, normalised."""
    coco = json.loads(ann_path.read_text())
    cls_of = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    label_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
    size = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for a in coco["annotations"]:
        w, h = size[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        rows[a["image_id"]].append(
            f"{cls_of[a['category_id']]} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
    for im in coco["images"]:
        (label_dir / (Path(im["file_name"]).stem + ".txt")).write_text("\n".join(rows[im["id"]]) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "tmp" / "demo-train")
    ap.add_argument("--train-count", type=int, default=400)
    ap.add_argument("--holdout-count", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--deterministic", action="store_true")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--init", type=Path, help="start from these weights (a .pt of an earlier run) instead of "
                                              "yolov10n.yaml: a second, shorter schedule that refines them")
    ap.add_argument("--lr0", type=float, default=0.01)
    ap.add_argument("--mosaic", type=float, default=1.0, help="mosaic probability (0 trains on whole images)")
    ap.add_argument("--profile", default="standard", choices=["standard", "hard"],
                    help="scene difficulty of the generated training data (tasks/demo_data.py PROFILES)")
    ap.add_argument("--name", default="run")
    ap.add_argument("--arch", default="yolov10n.yaml", help="Ultralytics model file trained from scratch "
                                                           "(yolov10n.yaml, yolo26n.yaml)")
    ap.add_argument("--exports", default="end2end", help="comma-separated: end2end (nms=False, 1x300x6), "
                                                         "raw (the default export, 1x(4+nc)xN)")
    ap.add_argument("--out", type=Path, default=ROOT / "demo" / "model" / "yolov10n-shapes.onnx",
                    help="the end2end export's path; the raw one gets -raw before the suffix")
    args = ap.parse_args()

    import torch
    from ultralytics import YOLO

    import ultralytics.utils.torch_utils as tu

    # Ultralytics resets torch to cpu_count - 1 threads (one, here) when it selects the CPU;
    # two halves the epoch time on this 2-core machine.
    tu.NUM_THREADS = args.threads
    torch.set_num_threads(args.threads)

    data_root = args.work / "data"
    for split, n in (("train", args.train_count), ("holdout", args.holdout_count)):
        ann = write_split(data_root, split, n, args.seed, profile=args.profile)
        coco_to_yolo(ann, data_root / split / "labels")
    names = {i: c["name"] for i, c in enumerate(CATEGORIES)}
    ds_yaml = args.work / "shapes.yaml"
    # Absolute paths: Ultralytics resolves relative ones against its own datasets folder.
    ds_yaml.write_text(json.dumps({
        "path": str(data_root.resolve()), "train": "train/images", "val": "holdout/images", "names": names}))

    t0 = time.time()
    model = YOLO(str(args.init) if args.init else args.arch)
    model.train(data=str(ds_yaml), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device="cpu",
                workers=1, cache="ram", seed=args.seed, deterministic=args.deterministic, plots=False, amp=False, val=False,
                project=str(args.work.resolve()), name=args.name, exist_ok=True, verbose=False,
                close_mosaic=10 if args.mosaic > 0 else 0, patience=0, lr0=args.lr0,
                mosaic=args.mosaic)
    train_s = time.time() - t0
    last = args.work / args.name / "weights" / "last.pt"
    import onnx

    written = {}
    for form in [f.strip() for f in args.exports.split(",") if f.strip()]:
        # nms=False selects the one-to-one head with top-K in the graph; the default (None) exports the
        # one-to-many head's raw table for NMS outside the model, as `yolo export` does for YOLO26.
        exported = YOLO(str(last)).export(format="onnx", imgsz=args.imgsz, opset=17, dynamic=False, simplify=True,
                                          batch=1, **({"nms": False} if form == "end2end" else {}))
        m = onnx.load(exported)
        out_shape = [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
        if form == "end2end":
            assert out_shape == [1, 300, 6], f"expected the NMS-free 1x300x6 head, got {out_shape}"
        else:
            assert len(out_shape) == 3 and out_shape[1] < out_shape[2], f"expected 1x(4+nc)xN, got {out_shape}"
        dest = args.out if form == "end2end" else args.out.with_name(args.out.stem + "-raw" + args.out.suffix)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(exported, dest)
        written[str(dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest)] = out_shape
    info_path = args.out.with_name(args.out.stem + ".train-info.json") if args.arch != "yolov10n.yaml" \
        else args.out.parent / "train-info.json"
    previous = json.loads(info_path.read_text()) if args.init and info_path.exists() else None
    info_path.write_text(json.dumps({
        "command": " ".join(["python", "scripts/train_demo_model.py", *sys.argv[1:]]),
        "arch": args.arch, "exports": written, "seed": args.seed, "epochs": args.epochs, "init": str(args.init) if args.init else None, "lr0": args.lr0,
        "mosaic": args.mosaic, "profile": args.profile, "previous_stage": previous, "imgsz": args.imgsz, "train_images": args.train_count,
        "train_seconds": round(train_s, 1), "torch": torch.__version__,
        "ultralytics": __import__("ultralytics").__version__, "threads": args.threads}, indent=2) + "\n")
    print(f"wrote {written} after {train_s:.0f} s of training")


if __name__ == "__main__":
    main()
