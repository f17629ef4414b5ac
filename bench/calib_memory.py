"""Peak memory of calibration against the number of calibration samples (streamed calibration).

    .venv/bin/python bench/calib_memory.py                   # yolov5n at 640: 32 vs 512 samples
    .venv/bin/python bench/calib_memory.py --counts 32,128 --model M.onnx --images DIR

Each count runs in a fresh process (so peaks do not mix): the calibration tensor is written from
images one sample at a time (as the flow does), then ModelOpt max PTQ and the ort-cpu build read it
through the streaming reader. Printed and written to bench/results/calib-memory.json: the process
peak RSS, the peak during each quantizer, and their ratio to the smallest count. Only 80 real
calibration images exist in ../shared, so larger counts reuse images (memory does not depend on
what the pixels are).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from shared_data import YOLOV5N  # noqa: E402


def child(model: Path, images: Path, count: int) -> dict:
    import logging

    import onnx

    logging.disable(logging.WARNING)
    from tasks.quantization.calibration import list_images, open_reader, write_calib_npy
    from tasks.config import OrtCpuSettings, QuantSettings
    from tasks.quantization.ort_qdq import build_ort_cpu
    from tasks.evaluation.preprocess import PreprocessSpec
    from tasks.quantization.modelopt_ptq import PeakRSS, run_ptq
    from tasks.evaluation.runtime import model_io

    name, shape, _ = model_io(onnx.load(str(model)))
    files = list_images(images)
    files = [files[i % len(files)] for i in range(count)]
    out: dict = {"count": count, "input_shape": list(shape)}
    with tempfile.TemporaryDirectory(prefix="calib-mem-") as td:
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            write_calib_npy(Path(td) / "calib.npy", files, shape, PreprocessSpec())
        out["tensor_mib"] = round((Path(td) / "calib.npy").stat().st_size / 2**20, 1)
        out["write_peak_mib"], out["write_s"] = round(mem.peak / 2**20, 1), round(time.perf_counter() - t0, 1)
        rec = run_ptq(model, name, open_reader(Path(td) / "calib.npy", name), QuantSettings(calib_eps=["cpu"]),
                      Path(td) / "q.onnx", Path(td) / "q.log")
        out["modelopt_peak_mib"], out["modelopt_s"] = rec["peak_rss_mib"], rec["wall_s"]
        rec = build_ort_cpu(model, open_reader(Path(td) / "calib.npy", name), OrtCpuSettings(), Path(td) / "o.onnx",
                            Path(td) / "o.log")
        out["ort_cpu_peak_mib"], out["ort_cpu_s"] = rec["peak_rss_mib"], rec["wall_s"]
    out["process_peak_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=YOLOV5N["model"])
    ap.add_argument("--images", type=Path, default=YOLOV5N["calib_images"])
    ap.add_argument("--counts", default="32,512")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calib-memory.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.images, args.child)))
        return
    if not args.model.exists():
        sys.exit(f"{args.model} is absent (../shared next to the repo, or --model)")
    rows = []
    for n in [int(c) for c in args.counts.split(",")]:
        p = subprocess.run([sys.executable, __file__, "--child", str(n), "--model", str(args.model),
                            "--images", str(args.images)], capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"count {n} failed:\n{p.stderr[-3000:]}")
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"{args.model.name}  input {rows[0]['input_shape']}")
    print(f"{'samples':>8}{'tensor MiB':>12}{'process peak':>14}{'ModelOpt peak':>15}{'ort-cpu peak':>14}"
          f"{'ModelOpt s':>12}   ratio to {base['count']} (process / ModelOpt / ort-cpu)")
    for r in rows:
        r["ratio"] = {k: round(r[k] / base[k], 3) for k in ("process_peak_mib", "modelopt_peak_mib", "ort_cpu_peak_mib")}
        print(f"{r['count']:>8}{r['tensor_mib']:>12.0f}{r['process_peak_mib']:>14.0f}{r['modelopt_peak_mib']:>15.0f}"
              f"{r['ort_cpu_peak_mib']:>14.0f}{r['modelopt_s']:>12.1f}   "
              + " / ".join(f"{v:.2f}" for v in r["ratio"].values()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps({"model": str(args.model), "rows": rows}, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
