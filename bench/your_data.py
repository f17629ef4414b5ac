"""Ultralytics datasets against COCO files, on real data (docs/your-data.md cites the figures).

    .venv/bin/python bench/your_data.py [--models yolov5n,yolov10s] [--speed-images 5000]

1. The 300 COCO images of ../shared/data/coco-val2017-300 laid out as an Ultralytics dataset under
   tmp/your-data/coco300 (images linked, YOLO labels written from the COCO file as Ultralytics'
   `convert_coco` writes them: crowd boxes dropped, `%g` coordinates; a `train` split of the
   coco-calib-512 images), evaluated with `--data`, beside the COCO file with its crowd annotations
   removed: FP32 mAP of each model both ways (they must agree within 0.0005).
2. The COCO file with its categories renumbered in another order (same names, same boxes): the same
   mAP, matched by name (YOLOv10s; YOLOv5n's export carries no names, so it cannot be matched and
   scores what index order gives); and a dataset with another class list: refused, its line printed.
3. Checking every label file of a 5,000-image split (`read_data`, image sizes from the headers):
   wall time, best of three, on this machine's CPU.
4. With --ultralytics-venv DIR (a separate environment with ultralytics, as scripts/train_demo_model.py
   describes; never a dependency): `yolo val` of the YOLOv10s export on the same dataset, beside this
   tool's figures, to size the difference between Ultralytics' metric and pycocotools'.
Writes bench/results/your-data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from tasks.evaluation.coco_eval import AnnotationError  # noqa: E402
from tasks.evaluation.evaluate import EvalSettings, evaluate_model  # noqa: E402
from tasks.evaluation.runtime import cpu_info, cpu_label  # noqa: E402
from tasks.evaluation.sources.base import DataSpec  # noqa: E402
from tasks.evaluation.sources.table import read_data  # noqa: E402
from tasks.run.rundir import atomic_write_json  # noqa: E402

SHARED = ROOT.parent / "shared"
MODELS = {"yolov5n": SHARED / "models/yolov5n-coco/yolov5n.onnx", "yolov10s": SHARED / "models/yolov10s-coco/yolov10s.onnx"}
COCO300 = SHARED / "data/coco-val2017-300"
CALIB = SHARED / "data/coco-calib-512/images"
WORK = ROOT / "tmp" / "your-data"
OUT = ROOT / "bench" / "results" / "your-data.json"


def _link_all(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if not (dst / p.name).exists():
            os.symlink(p.resolve(), dst / p.name)


def coco_to_ultralytics(ann: Path, images: Path, root: Path, train: Path | None) -> Path:
    """Ultralytics' convert_coco for boxes: class = the category's index in id order (COCO's 91 -> 80),
    crowd boxes dropped, cx cy w h normalised, written with %g; one label file per image."""
    coco = json.loads(ann.read_text())
    cls_of = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    size = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    rows: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        if a.get("iscrowd"):
            continue
        w, h = size[a["image_id"]]
        box = np.array(a["bbox"], dtype=np.float64)
        box[:2] += box[2:] / 2
        box[[0, 2]] /= w
        box[[1, 3]] /= h
        if box[2] <= 0 or box[3] <= 0:
            continue
        line = (cls_of[a["category_id"]], *box)
        rows[a["image_id"]].append(("%g " * len(line)).rstrip() % line)
    _link_all(images, root / "images" / "val")
    (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
    for im in coco["images"]:
        (root / "labels" / "val" / (Path(im["file_name"]).stem + ".txt")).write_text(
            "".join(r + "\n" for r in rows[im["id"]]))
    keys = {"path": str(root), "val": "images/val",
            "names": {i: c["name"] for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}}
    if train is not None:
        _link_all(train, root / "images" / "train")
        keys["train"] = "images/train"
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump(keys, sort_keys=False))
    return data


def without_crowd(ann: Path, out: Path) -> Path:
    coco = json.loads(ann.read_text())
    coco["annotations"] = [a for a in coco["annotations"] if not a.get("iscrowd")]
    out.write_text(json.dumps(coco))
    return out


def renumbered(ann: Path, out: Path) -> Path:
    """Categories given other ids in another order (the last name gets the smallest id)."""
    coco = json.loads(ann.read_text())
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    new = {c["id"]: 1000 + len(cats) - i for i, c in enumerate(cats)}
    coco["categories"] = [{**c, "id": new[c["id"]]} for c in cats]
    coco["annotations"] = [{**a, "category_id": new[a["category_id"]]} for a in coco["annotations"]]
    out.write_text(json.dumps(coco))
    return out


def speed_split(root: Path, n: int) -> Path:
    """n small JPEGs with 3-8 boxes each (written once; the timing reads headers and labels only)."""
    data = root / "data.yaml"
    if data.is_file() and len(list((root / "labels" / "val").iterdir())) == n:
        return data
    rng = np.random.default_rng(0)
    (root / "images" / "val").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    for i in range(n):
        img.save(root / "images" / "val" / f"{i:06d}.jpg", quality=50)
        k = int(rng.integers(3, 9))
        boxes = rng.uniform(0.2, 0.8, (k, 2))
        wh = rng.uniform(0.05, 0.3, (k, 2))
        (root / "labels" / "val" / f"{i:06d}.txt").write_text(
            "".join(f"{int(rng.integers(0, 80))} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n"
                    for (x, y), (w, h) in zip(boxes, wh)))
    data.write_text(yaml.safe_dump({"path": str(root), "val": "images/val", "names": [f"c{i}" for i in range(80)]}))
    return data


def yolo_val(venv: Path, model: Path, data: Path) -> dict:
    """`yolo val` of an ONNX export (Ultralytics' own metric), its `all` row parsed."""
    import subprocess

    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false"}
    cmd = [str(venv / "bin" / "yolo"), "val", f"model={model}", f"data={data}", "imgsz=640", "batch=1",
           "device=cpu", "plots=False", f"project={WORK / 'yolo-val'}", "name=run", "exist_ok=True"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=WORK, timeout=3600)
    rows = [line.split() for line in (r.stdout + r.stderr).splitlines() if line.split()[:1] == ["all"]]
    if r.returncode or not rows:
        raise RuntimeError(f"yolo val failed ({r.returncode}): {(r.stdout + r.stderr)[-500:]}")
    _, images, boxes, p, rec, m50, m5095 = rows[-1][:7]
    return {"command": " ".join(cmd), "images": int(images), "boxes": int(boxes), "precision": float(p),
            "recall": float(rec), "map50": float(m50), "map50_95": float(m5095)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="yolov5n,yolov10s")
    ap.add_argument("--speed-images", type=int, default=5000)
    ap.add_argument("--ultralytics-venv", type=Path, help="a venv with ultralytics: also run `yolo val`")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if not COCO300.is_dir():
        ap.error(f"{COCO300} is absent: this benchmark needs ../shared next to the repository")
    ann = COCO300 / "annotations" / "instances_val2017.json"
    data = coco_to_ultralytics(ann, COCO300 / "images", WORK / "coco300", CALIB)
    nocrowd = without_crowd(ann, WORK / "coco300-nocrowd.json")
    renum = renumbered(ann, WORK / "coco300-renumbered.json")
    settings = EvalSettings(providers=["cpu"], deployed_runs=0, warmup=2, bootstrap_resamples=0)
    out: dict = {"cpu": cpu_label(), "cpu_info": cpu_info(), "images": 300, "dataset": str(data), "models": {}}
    print(f"CPU: {out['cpu']}")
    for name in a.models.split(","):
        model = MODELS[name]
        res = {"yolo": evaluate_model(model, DataSpec(data=data), settings=settings),
               "coco_nocrowd": evaluate_model(model, DataSpec(COCO300 / "images", nocrowd), settings=settings),
               "coco": evaluate_model(model, DataSpec(COCO300 / "images", ann), settings=settings),
               "coco_renumbered": evaluate_model(model, DataSpec(COCO300 / "images", renum), settings=settings)}
        row = {k: {"map50_95": m["map50_95"], "map50": m["map50"], "gt_boxes": m["gt_boxes"],
                   "classes": m["classes"]["how"]} for k, m in res.items()}
        row["yolo_minus_coco_nocrowd"] = round(res["yolo"]["map50_95"] - res["coco_nocrowd"]["map50_95"], 6)
        row["renumbered_minus_coco"] = round(res["coco_renumbered"]["map50_95"] - res["coco"]["map50_95"], 6)
        row["renumbered_note"] = res["coco_renumbered"]["classes"]["note"]
        out["models"][name] = row
        print(f"{name}: --data {row['yolo']['map50_95']:.4f} ({row['yolo']['gt_boxes']} boxes), COCO file without "
              f"crowd {row['coco_nocrowd']['map50_95']:.4f} ({row['coco_nocrowd']['gt_boxes']} boxes): difference "
              f"{row['yolo_minus_coco_nocrowd']:+.6f}; with crowd {row['coco']['map50_95']:.4f}, renumbered "
              f"{row['coco_renumbered']['map50_95']:.4f} ({row['coco_renumbered']['classes']})")
    # another class list, with valid labels: one name renamed; one name more
    names = yaml.safe_load(data.read_text())["names"]
    out["other_classes"] = {}
    for case, other_names in (("one name renamed", {**names, 3: "scooter"}),
                              ("81 names", {**names, len(names): "scooter"})):
        other = WORK / f"other-classes-{len(out['other_classes'])}.yaml"
        other.write_text(yaml.safe_dump({"path": str(WORK / "coco300"), "val": "images/val", "names": other_names}))
        t0 = time.perf_counter()
        try:
            evaluate_model(MODELS["yolov10s"], DataSpec(data=other), settings=settings)
            said = "not refused"
        except AnnotationError as e:
            said = str(e)
        out["other_classes"][case] = {"message": said, "wall_s": round(time.perf_counter() - t0, 3)}
        print(f"another class list ({case}): {said}")
    split = speed_split(WORK / "speed", a.speed_images)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        d = read_data(DataSpec(data=split))
        times.append(time.perf_counter() - t0)
    out["label_check"] = {"images": len(d.paths), "boxes": d.record["boxes"], "wall_s": [round(t, 3) for t in times],
                          "best_s": round(min(times), 3)}
    print(f"label check of {len(d.paths)} images ({d.record['boxes']} boxes): best of 3 {min(times):.3f} s "
          f"({', '.join(f'{t:.3f}' for t in times)})")
    if a.ultralytics_venv:
        out["yolo_val"] = yolo_val(a.ultralytics_venv, MODELS["yolov10s"], data)
        ours = out["models"].get("yolov10s", {}).get("yolo", {})
        print(f"yolo val of yolov10s: mAP50-95 {out['yolo_val']['map50_95']}, mAP50 {out['yolo_val']['map50']} "
              f"(this tool: {ours.get('map50_95')}, {ours.get('map50')})")
    atomic_write_json(a.out, out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
