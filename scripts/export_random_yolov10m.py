"""Export a randomly initialised YOLOv10m to ONNX, for timing and memory benchmarks (development-time only).

The benchmarks need a model of the user's size (YOLOv10m: same graph, same parameter count, same
end-to-end NMS-free 1x300x6 head) but nothing here can download weights. Ultralytics builds the
architecture from its bundled yolov10m.yaml, so this script does that with torch.manual_seed(0) and
exports it the way the user's model was exported (opset 17, static 1x3x640x640 input "images",
output "output0" of shape 1x300x6). Its detections are meaningless; do not use it for accuracy.

Run it, from the repository root, with the separate training environment (Ultralytics is AGPL and
never a dependency of the project itself):

    /work/venv-train/bin/python scripts/export_random_yolov10m.py
    /work/venv-train/bin/python scripts/export_random_yolov10m.py --out tmp/bench-models/other.onnx --imgsz 640

That environment needs onnx and onnxslim besides torch/torchvision/ultralytics (both are installed
there; otherwise: /work/venv-train/bin/pip install onnx onnxslim). onnxruntime is not needed there:
Ultralytics only warns that it is missing.

It writes tmp/bench-models/yolov10m-random.onnx and, beside it, yolov10m-random.onnx.json (architecture,
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
ARCH = "yolov10m"
SEED = 0
NOTE = "for timing and memory only: its detections are meaningless"
NOTE_KEY = "yolo_lowbit_note"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "tmp" / "bench-models" / f"{ARCH}-random.onnx",
                   help="output .onnx (relative paths are taken from the repository root)")
    p.add_argument("--imgsz", type=int, default=640, help="square input size")
    return p.parse_args()


def export_random(imgsz: int, work: Path) -> Path:
    """Build YOLOv10m from its yaml with seeded random weights and export it; return the .onnx path."""
    torch.manual_seed(SEED)
    model = YOLO(f"{ARCH}.yaml")  # bundled config: builds the architecture, downloads nothing
    # The exporter writes next to the yaml's (relative) name, i.e. into the working directory.
    cwd = Path.cwd()
    os.chdir(work)
    try:
        exported = model.export(format="onnx", imgsz=imgsz, opset=17, dynamic=False, simplify=True,
                                nms=False, batch=1, device="cpu")
    finally:
        os.chdir(cwd)
    return (work / exported).resolve()


def finalise(model: onnx.ModelProto, imgsz: int) -> None:
    """Check the I/O contract and make the file reproducible and self-describing."""
    ins = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input]
    outs = [(o.name, [d.dim_value for d in o.type.tensor_type.shape.dim]) for o in model.graph.output]
    assert ins == [("images", [1, 3, imgsz, imgsz])], f"unexpected inputs {ins}"
    assert outs == [("output0", [1, 300, 6])], f"expected the NMS-free 1x300x6 head, got {outs}"
    # Ultralytics stamps the export time into "date"; dropping it keeps the sha256 stable across runs.
    props = [p for p in model.metadata_props if p.key not in {"date", NOTE_KEY}]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    note = model.metadata_props.add()
    note.key, note.value = NOTE_KEY, f"{ARCH}, random weights (seed {SEED}): {NOTE}"


def write_atomically(data: bytes, dest: Path) -> None:
    """Write to a temporary name then rename, so a half-written file never looks complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)


def main() -> None:
    args = parse_args()
    out = args.out if args.out.is_absolute() else ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # A scratch folder beside the output keeps Ultralytics' intermediate files out of the repository.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as work:
        model = onnx.load(str(export_random(args.imgsz, Path(work))))
    finalise(model, args.imgsz)
    data = model.SerializeToString()
    write_atomically(data, out)
    info = {
        "architecture": ARCH,
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
