"""Export a randomly initialised Ultralytics YOLO to ONNX, for timing and memory benchmarks (development-time only).

The benchmarks need a model of the user's size (YOLOv10m: same graph, same parameter count, same
end-to-end NMS-free 1x300x6 head) but nothing here can download weights. Ultralytics builds the
architecture from its bundled yaml (yolov10m.yaml by default; --arch yolo11n for the user's other
family, whose output is 1x84xN), so this script does that with torch.manual_seed(0) and exports it the
way the user's model was exported (opset 17, static 1x3xSxS input "images", output "output0"). Its
detections are meaningless; do not use it for accuracy.

Run it, from the repository root, with a separate environment (Ultralytics is AGPL and never a
dependency of the project itself): `python -m venv ../venv-train && ../venv-train/bin/pip install
torch==2.13.0 ultralytics onnx onnxslim`, then

    ../venv-train/bin/python scripts/export_random_yolo.py
    ../venv-train/bin/python scripts/export_random_yolo.py --arch yolo11n   # tmp/bench-models/yolo11n-random.onnx
    ../venv-train/bin/python scripts/export_random_yolo.py --out tmp/bench-models/other.onnx --imgsz 640

onnxruntime is not needed there: Ultralytics only warns that it is missing.

It writes tmp/bench-models/<arch>-random.onnx and, beside it, <arch>-random.onnx.json (architecture,
seed, versions, sha256). Neither is committed: tmp/ is git-ignored (`git check-ignore tmp/bench-models/x`
names .gitignore:1). With the same torch/ultralytics/onnx versions the file is byte-identical across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

# Before importing ultralytics: it reads these at import time. Offline stops the settings sync,
# GitHub asset checks and pip auto-installs that would otherwise hang or fail without internet.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import onnx  # noqa: E402
import torch  # noqa: E402
import ultralytics  # noqa: E402
from ultralytics import YOLO  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
NOTE = "for timing and memory only: its detections are meaningless"
NOTE_KEY = "yolo_lowbit_note"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="yolov10m", help="an Ultralytics model yaml name: yolov10m, yolo11n, yolov8s ...")
    p.add_argument("--out", type=Path, help="output .onnx (relative paths are taken from the repository root; "
                                           "default tmp/bench-models/<arch>-random.onnx)")
    p.add_argument("--imgsz", type=int, default=640, help="square input size")
    return p.parse_args()


def export_random(arch: str, imgsz: int, work: Path) -> Path:
    """Build `arch` from its yaml with seeded random weights and export it; return the .onnx path."""
    torch.manual_seed(SEED)
    model = YOLO(f"{arch}.yaml")  # bundled config: builds the architecture, downloads nothing
    # The exporter writes next to the yaml's (relative) name, i.e. into the working directory.
    cwd = Path.cwd()
    os.chdir(work)
    try:
        exported = model.export(format="onnx", imgsz=imgsz, opset=17, dynamic=False, simplify=True,
                                nms=False, batch=1, device="cpu")
    finally:
        os.chdir(cwd)
    return (work / exported).resolve()


def finalise(model: onnx.ModelProto, arch: str, imgsz: int) -> None:
    """Check the I/O contract and make the file reproducible and self-describing."""
    ins = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input]
    outs = [(o.name, [d.dim_value for d in o.type.tensor_type.shape.dim]) for o in model.graph.output]
    assert ins == [("images", [1, 3, imgsz, imgsz])], f"unexpected inputs {ins}"
    # YOLOv10 is NMS-free (top 300 as x1,y1,x2,y2,score,class); the others give 4 box + 80 class rows
    # for every anchor of strides 8, 16 and 32
    anchors = sum((imgsz // s) ** 2 for s in (8, 16, 32))
    want = [1, 300, 6] if arch.startswith("yolov10") else [1, 84, anchors]
    assert outs == [("output0", want)], f"expected output0 {want} for {arch}, got {outs}"
    # Ultralytics stamps the export time into "date"; dropping it keeps the sha256 stable across runs.
    props = [p for p in model.metadata_props if p.key not in {"date", NOTE_KEY}]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    note = model.metadata_props.add()
    note.key, note.value = NOTE_KEY, f"{arch}, random weights (seed {SEED}): {NOTE}"


def write_atomically(data: bytes, dest: Path) -> None:
    """Write to a temporary name then rename, so a half-written file never looks complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)


def main() -> None:
    args = parse_args()
    out = args.out or Path("tmp") / "bench-models" / f"{args.arch}-random.onnx"
    out = out if out.is_absolute() else ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # A scratch folder beside the output keeps Ultralytics' intermediate files out of the repository.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as work:
        model = onnx.load(str(export_random(args.arch, args.imgsz, Path(work))))
    finalise(model, args.arch, args.imgsz)
    data = model.SerializeToString()
    write_atomically(data, out)
    info = {
        "architecture": args.arch,
        "weights": f"random (seed {SEED})",
        "imgsz": args.imgsz,
        "opset": 17,
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "sha256": hashlib.sha256(data).hexdigest(),
        "note": NOTE,
    }
    write_atomically((json.dumps(info, indent=2) + "\n").encode(), out.with_name(out.name + ".json"))
    print(f"wrote {out} ({len(data) / 2**20:.1f} MiB, sha256 {info['sha256'][:12]}) in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
