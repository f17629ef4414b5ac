"""What `--ort-silu-floor` does to finished runs' `ort-cpu` models, without rebuilding them.

    .venv/bin/python bench/silu_floor.py --runs tmp/bench-accuracy/{yolov5n,yolov10s,demo}/plain/run

Each run's shipped `ort-cpu` model gets tasks/quantization/silu_floor.py's floors (what the option
does after ORT's quantizer) and both are evaluated on the run's images against its FP32 export: the
mAP50-95 delta with its paired 95% interval, the floored tensors and their step ratios, the CPU
(bench/results/silu-floor.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.config import RunConfig  # noqa: E402
from tasks.evaluation.bootstrap import paired_interval  # noqa: E402
from tasks.evaluation.evaluate import evaluate_model  # noqa: E402
from tasks.evaluation.runtime import device_name  # noqa: E402
from tasks.quantization.silu_floor import raise_silu_floors  # noqa: E402

OUT = ROOT / "bench" / "results" / "silu-floor.json"


def one_run(run: Path) -> dict[str, Any]:
    cfg = RunConfig.model_validate(json.loads((run / "run-config.json").read_text()))
    shipped = next((run / "onnx").glob("*-int8-ort-cpu.onnx"), None)
    if shipped is None:
        raise SystemExit(f"error: {run}: no onnx/*-int8-ort-cpu.onnx; give a finished run with --target ort-cpu")
    q = onnx.load(str(shipped))
    floors = raise_silu_floors(q)
    settings = cfg.eval.model_copy(update={"providers": ["cpu"]})
    ev = lambda p: evaluate_model(p, Path(cfg.images), Path(cfg.annotations), cfg.subset, settings)  # noqa: E731
    with tempfile.TemporaryDirectory() as td:
        floored = Path(td) / "floored.onnx"
        onnx.save(q, str(floored))
        m = {"fp32": ev(Path(cfg.model)), "as shipped": ev(shipped), "with the floor": ev(floored)}
    row: dict[str, Any] = {"model": str(cfg.model), "images": m["fp32"]["images"], "floored": len(floors),
                           "median_step_ratio": statistics.median(f["step_ratio"] for f in floors) if floors else None,
                           "min_step_ratio": min((f["step_ratio"] for f in floors), default=None)}
    for k in ("as shipped", "with the floor"):
        ci = paired_interval(m["fp32"]["bootstrap"], m[k]["bootstrap"], "map50_95")
        row[k] = {"map50_95": m[k]["map50_95"], "delta_pt": round((m[k]["map50_95"] - m["fp32"]["map50_95"]) * 100, 3),
                  "ci_pt": None if ci is None else [round(x * 100, 2) for x in ci]}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="finished run folders with an ort-cpu model")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    for r in a.runs:
        if not (r / "run-config.json").is_file():
            ap.error(f"{r}: no run-config.json; give the folder of a finished run (it prints 'run folder: ...')")
    out = {"cpu": device_name("CPUExecutionProvider"), "rows": {}}
    print(f"CPU: {out['cpu']}; ort-cpu mAP50-95 minus FP32 in points, 95% CI")
    for r in a.runs:
        row = out["rows"][str(r)] = one_run(r)
        s, f = row["as shipped"], row["with the floor"]
        print(f"  {Path(row['model']).stem:12s} {row['images']} images, {row['floored']} floored "
              f"(median step x{row['median_step_ratio']}): as shipped {s['delta_pt']:+.2f} {s['ci_pt']}, "
              f"with the floor {f['delta_pt']:+.2f} {f['ci_pt']}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
