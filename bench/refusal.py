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

    .venv/bin/python bench/refusal.py --data-cases          # writes bench/results/refusal-data.json

The Ultralytics dataset cases instead (`--data DATA.yaml`, the demo's images laid out the Ultralytics
way): each bad dataset file or label line, a dataset with another class list, a segment export, and
fp16 float parts asked for a target they do not apply to.
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
sys.path.insert(0, str(ROOT / "bench"))

from tasks.config import load_demo_config  # noqa: E402
from tasks.evaluation.runtime import cpu_info, cpu_label  # noqa: E402
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


def data_cases(work: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, the text its refusal must hold), on the demo laid out as an Ultralytics dataset."""
    import yaml

    from your_data import coco_to_ultralytics  # bench/your_data.py: Ultralytics' convert_coco for boxes

    demo = load_demo_config()
    paths, model = demo["paths"], Path(demo["model"])
    good = coco_to_ultralytics(Path(paths["annotations"]), Path(paths["images"]), work / "ds", Path(paths["calib_images"]))
    keys = yaml.safe_load(good.read_text())
    labels = sorted((work / "ds" / "labels" / "val").iterdir())

    def dataset(name: str, **over: object) -> Path:
        p = work / f"{name}.yaml"
        p.write_text(yaml.safe_dump({**keys, **over}))
        return p

    def label(i: int, line: str) -> Path:
        """A copy of the dataset whose i-th label file gets `line` as its third line."""
        root = work / f"labels-{i}"
        shutil.copytree(work / "ds", root, symlinks=True)
        f = root / "labels" / "val" / labels[i].name
        rows = f.read_text().splitlines()[:2]
        f.write_text("\n".join(rows + [line]) + "\n")
        return dataset(f"labels-{i}", path=str(root))

    (work / "ds" / "images" / "empty").mkdir()
    seg = work / "seg.onnx"
    m = onnx.load(str(model))
    meta = {p.key: p.value for p in m.metadata_props}
    del m.metadata_props[:]
    for k, v in {**meta, "task": "segment"}.items():  # the export's own task key, said otherwise
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(seg))
    nc = len(keys["names"])
    base = ["--model", str(model), "--calib-count", "16"]
    return {
        "dataset file missing": (base + ["--data", str(work / "nope.yaml")], "does not exist"),
        "dataset file not YAML": (base + ["--data", str(_write(work / "bad.yaml", "names: [a\nval: ["))],
                                  "is not valid YAML"),
        "split not in the file": (base + ["--data", str(good), "--split", "test"], "has no 'test' split"),
        "split path missing": (base + ["--data", str(dataset("missing", val="images/nope"))], "does not exist"),
        "split empty": (base + ["--data", str(dataset("empty", val="images/empty"))], "holds no images"),
        "nc and names disagree": (base + ["--data", str(dataset("nc", nc=nc + 1))], "make them agree"),
        "label: wrong field count": (base + ["--data", str(label(0, "1 0.5 0.5 0.2"))], "has 4 fields"),
        "label: not a number": (base + ["--data", str(label(1, "1 0.5 x 0.2 0.2"))], "is not a number"),
        "label: negative class": (base + ["--data", str(label(2, "-1 0.5 0.5 0.2 0.2"))], "is not a class index"),
        "label: class >= names": (base + ["--data", str(label(3, f"{nc} 0.5 0.5 0.2 0.2"))], "is not a class index"),
        "label: coordinate outside": (base + ["--data", str(label(4, "1 0.5 0.5 1.2 0.2"))], "is outside [0, 1]"),
        "label: zero width": (base + ["--data", str(label(5, "1 0.5 0.5 0 0.2"))], "a box needs both above 0"),
        "another class list": (base + ["--data", str(dataset("names", names={**keys["names"], 1: "pentagon"}))],
                               "class names do not match"),
        "segment export": (["--model", str(seg), "--data", str(good), "--calib-count", "16"],
                           "scores object detection only"),
        "fp16 for ort-cpu": (base + ["--data", str(good), "--target", "ort-cpu", "--set",
                                     "quant.high_precision_dtype=fp16"], "Add --target tensorrt"),
    }


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


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
    ap.add_argument("--data-cases", action="store_true", help="the Ultralytics dataset cases (--data), written to "
                                                              "bench/results/refusal-data.json unless --out is given")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    a.out = a.out or ROOT / "bench" / "results" / ("refusal-data.json" if a.data_cases else "refusal.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        env.update(PREFECT_HOME=str(work / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   DO_NOT_TRACK="1")
        rows = {}
        for name, (args, expect) in (data_cases(work) if a.data_cases else cases(work)).items():
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
                  f"{'refused' if refused else 'NOT refused before work'}: {rows[name]['message'][:110]}", flush=True)
    out = {"cpu": cpu_label(), "cpu_info": cpu_info(), "checkout": str(a.checkout.resolve().name), "repeat": a.repeat, "cases": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
