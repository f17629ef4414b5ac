"""How fast the command line refuses bad input: each case run as a user runs it (`python flows/int8.py
...` in a fresh process), median of --repeat wall times, with the exit code and the one line it printed.

    .venv/bin/python bench/refusal.py                       # this checkout; writes bench/results/refusal.json
    .venv/bin/python bench/refusal.py --checkout ../other --python ../other/.venv/bin/python --out /tmp/r.json

Five bad inputs a new user makes (a missing model, a corrupt model, annotations that are not JSON, a
subset and a calibration count that ask for more than there is) and the two content checks (a
calibration tensor on the 0-255 scale, a calibration image that does not decode), all built from the
bundled demo's model and data in a temporary folder. `--checkout` times another checkout's command
(an older release) on the same cases: a case it does not refuse before the flow starts is stopped
after --limit seconds and recorded as such.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.config import load_demo_config  # noqa: E402
from tasks.evaluation.runtime import cpu_label  # noqa: E402
from tasks.evaluation.shapes import declared_dims, graph_input  # noqa: E402


def cases(work: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, the text its refusal must hold)."""
    demo = load_demo_config()
    paths = demo["paths"]
    model = Path(demo["model"])
    base = ["--model", str(model), "--images", str(paths["images"]), "--annotations", str(paths["annotations"]),
            "--calib-images", str(paths["calib_images"]), "--calib-count", "16", "--subset", "20"]

    def with_(**over: str) -> list[str]:
        args = list(base)
        for k, v in over.items():
            flag = "--" + k.replace("_", "-")
            if flag in args:
                args[args.index(flag) + 1] = v
            else:
                args += [flag, v]
        return args

    corrupt = work / "cut.onnx"
    corrupt.write_bytes(model.read_bytes()[:4096])
    not_json = work / "ann.json"
    not_json.write_text("images: []\n")
    n_calib = len(list(Path(paths["calib_images"]).iterdir()))
    tensor = work / "calib-0-255.npy"
    # the model's own input size, so that the value check (not the shape check) is what refuses it
    _, _, h, w = declared_dims(graph_input(onnx.load(str(model), load_external_data=False)))
    np.save(tensor, np.full((4, 3, h, w), 128.0, dtype=np.float32))
    bad_images = work / "calib-images"
    shutil.copytree(paths["calib_images"], bad_images)
    victim = sorted(bad_images.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:64])  # a truncated file that keeps its name
    no_calib = [a for a in base if a not in ("--calib-images", str(paths["calib_images"]), "--calib-count", "16")]
    return {
        "missing model": (with_(model=str(work / "missing.onnx")), "does not exist"),
        "corrupt model": (with_(model=str(corrupt)), "is not a valid ONNX model"),
        "annotations not JSON": (with_(annotations=str(not_json)), "is not JSON"),
        "subset over-ask": (with_(subset="100000"), "asks for more images"),
        "calib-count over-ask": (with_(calib_count=str(n_calib + 1)), "asks for more images"),
        "calibration tensor 0-255": (no_calib + ["--calib", str(tensor)], "un-normalised (0-255)"),
        "calibration image undecodable": (with_(calib_images=str(bad_images), calib_count=str(n_calib)),
                                          "cannot be decoded"),
    }


def one(python: str, script: Path, args: list[str], cwd: Path, limit: float, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        r = subprocess.run([python, str(script), *args, "--run-root", str(cwd / "runs")], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=limit)
        rc, err = r.returncode, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = None, (e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or "")
    wall = time.perf_counter() - t0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return {"wall_s": round(wall, 3), "rc": rc, "last_line": lines[-1] if lines else "",
            "run_folder_left": (cwd / "runs").exists() and any((cwd / "runs").iterdir())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkout", type=Path, default=ROOT, help="the checkout whose flows/int8.py is timed")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--limit", type=float, default=90.0, help="seconds before a case counts as not refused")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "refusal.json")
    a = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        env.update(PREFECT_HOME=str(work / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   DO_NOT_TRACK="1")
        rows = {}
        for name, (args, expect) in cases(work).items():
            runs = []
            for i in range(a.repeat):
                cwd = work / f"{len(rows)}-{i}"
                cwd.mkdir()
                runs.append(one(a.python, a.checkout.resolve() / "flows" / "int8.py", args, cwd, a.limit, env))
            refused = all(r["rc"] == 2 and expect in r["last_line"] and not r["run_folder_left"] for r in runs)
            rows[name] = {"median_s": round(statistics.median(r["wall_s"] for r in runs), 2),
                          "walls_s": [r["wall_s"] for r in runs], "refused_before_work": refused,
                          "rc": runs[-1]["rc"], "message": runs[-1]["last_line"][:300]}
            print(f"{name:<32} {rows[name]['median_s']:6.2f} s  rc={rows[name]['rc']}  "
                  f"{'refused' if refused else 'NOT refused before work'}: {rows[name]['message'][:110]}")
    out = {"cpu": cpu_label(), "checkout": str(a.checkout.resolve().name), "repeat": a.repeat, "cases": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
