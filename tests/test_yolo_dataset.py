"""Ultralytics datasets (`--data DATA.yaml`): the dataset file resolved as Ultralytics resolves it, YOLO
labels read into the same in-memory COCO form as a COCO file, every bad label refused naming its file
and line, calibration from the train split, class names checked against the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from tasks.config import RunConfig
from tasks.evaluation.coco_eval import AnnotationError
from tasks.evaluation.evaluate import EvalSettings, evaluate_model
from tasks.evaluation.sources.base import DataSpec
from tasks.evaluation.sources.table import read_data
from tasks.evaluation.sources.yolo_dataset import label_path
from tasks.steps.calibrate import calibration_images
from tiny import BOX, tiny_yolo_dataset

CPU = EvalSettings(providers=["cpu"], warmup=0, deployed_runs=0, bootstrap_resamples=0)


def _yaml(file: Path, **keys) -> Path:
    file.write_text(yaml.safe_dump(keys))
    return file


def _read(data: Path, split: str = "val"):
    return read_data(DataSpec(data=data, split=split))


def test_the_same_boxes_and_map_as_the_coco_file_of_the_same_images(tmp_path, tiny_model, tiny_data):
    data = tiny_yolo_dataset(tmp_path / "ds")
    d = _read(data)
    x0, y0, x1, y1 = BOX
    assert [a["bbox"] for a in d.coco.dataset["annotations"]] == [pytest.approx([x0, y0, x1 - x0, y1 - y0])] * 6
    assert d.record["root_resolved"] == "absolute" and d.names() == {0: "thing"}
    yolo = evaluate_model(tiny_model, DataSpec(data=data), settings=CPU)
    coco = evaluate_model(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]), settings=CPU)
    assert yolo["images"] == coco["images"] == 6 and yolo["gt_boxes"] == coco["gt_boxes"] == 6
    assert yolo["map50_95"] == coco["map50_95"] > 0.5
    assert yolo["classes"]["how"] == coco["classes"]["how"] == "names-in-order"
    assert yolo["data"]["format"] == "ultralytics" and yolo["data"]["split"] == "val"


def test_path_resolution_follows_ultralytics(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    data = tiny_yolo_dataset(root)
    # relative `path`: from the working directory first
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    d = _read(_yaml(tmp_path / "cfg" / "a.yaml", path="ds", val="images/val", names=["thing"]))
    assert d.record["root"] == str(root.resolve()) and "working directory" in d.record["root_resolved"]
    # ... else from the dataset file's folder
    monkeypatch.chdir(root / "images")
    d = _read(_yaml(tmp_path / "b.yaml", path="ds", val="images/val", names=["thing"]))
    assert d.record["root"] == str(root.resolve()) and "dataset file's folder" in d.record["root_resolved"]
    # no `path`: the file's folder; splits may be lists of folders, or .txt lists (./ lines: the list's folder)
    (root / "val.txt").write_text("./images/val/val0000.png\n./images/val/val0003.png\n")
    d = _read(_yaml(root / "c.yaml", val="val.txt", names={0: "thing"}))
    assert len(d.paths) == 2 and "no `path` key" in d.record["root_resolved"]
    d = _read(_yaml(root / "d.yaml", val=["images/val", "images/train"], names=["thing"]))
    assert len(d.paths) == 14
    # a ../ entry that does not exist from the root is tried without it, as Ultralytics does
    d = _read(_yaml(root / "e.yaml", path=str(root), val="../images/val", names=["thing"]))
    assert len(d.paths) == 6 and _read(data).record["images"] == 6


def test_labels_read_as_ultralytics_reads_them(tmp_path):
    root = tmp_path / "ds"
    data = tiny_yolo_dataset(root)
    lab = root / "labels" / "val"
    # a segment line counts as its polygon's box; a duplicate line is dropped; no label file: no objects
    (lab / "val0001.txt").write_text("0 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n")
    (lab / "val0002.txt").write_text("0 0.5 0.5 0.5 0.5\n0 0.5 0.5 0.5 0.5\n")
    (lab / "val0003.txt").unlink()
    (lab / "val0004.txt").write_text("\n")
    (lab / "val0005.txt").write_text("0 0.5 0.5 1.005 0.5\n")  # within Ultralytics' 1% tolerance
    d = _read(data)
    by_image = {}
    for a in d.coco.dataset["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    assert by_image[2] == [pytest.approx([16.0, 16.0, 32.0, 32.0])]
    assert len(by_image[3]) == 1 and 4 not in by_image and 5 not in by_image
    assert d.record["duplicate_labels_dropped"] == 1 and d.record["boxes"] == 4
    assert label_path(Path("/a/images/x/images/b.jpg")) == Path("/a/images/x/labels/b.txt")


@pytest.mark.parametrize("kind", ["missing", "not-yaml", "no-split", "split-path-missing", "split-empty",
                                  "nc-vs-names", "fields", "not-a-number", "class-negative", "class-too-big",
                                  "coordinate-outside", "zero-width", "negative-height", "mixed-rows",
                                  "listed-image-missing"])
def test_bad_data_is_refused_naming_the_file_line_and_fix(kind, tmp_path):
    root = tmp_path / "ds"
    data = tiny_yolo_dataset(root)
    label = root / "labels" / "val" / "val0002.txt"
    split = "val"
    lines = {"fields": "0 0.5 0.5 0.5", "not-a-number": "0 0.5 abc 0.5 0.5", "class-negative": "-1 0.5 0.5 0.5 0.5",
             "class-too-big": "1 0.5 0.5 0.5 0.5", "coordinate-outside": "0 0.5 0.5 1.02 0.5",
             "zero-width": "0 0.5 0.5 0 0.5", "negative-height": "0 0.5 0.5 0.5 -0.005",
             "mixed-rows": "0 0.5 0.5 0.5 0.5\n0 0.1 0.1 0.2 0.1 0.2 0.2"}
    expect = {"fields": f"label file {label} line 1 has 4 fields: a box is `class cx cy w h` (5)",
              "not-a-number": f"label file {label} line 1: 'abc' is not a number",
              "class-negative": f"label file {label} line 1: class -1 is not a class index of the dataset (0..0",
              "class-too-big": f"label file {label} line 1: class 1 is not a class index of the dataset (0..0",
              "coordinate-outside": f"label file {label} line 1: coordinate 1.02 is outside [0, 1] (normalised; "
                                    f"Ultralytics' tolerance of 0.01 allowed)",
              "zero-width": f"label file {label} line 1: width 0 and height 0.5: a box needs both above 0",
              "negative-height": f"label file {label} line 1: width 0.5 and height -0.005",
              "mixed-rows": f"label file {label} line 1: a box line in a file of segment lines"}
    if kind in lines:
        label.write_text(lines[kind] + "\n")
    elif kind == "missing":
        data = tmp_path / "nope.yaml"
        expect[kind] = f"dataset file {data} does not exist; pass --data"
    elif kind == "not-yaml":
        data.write_text("names: [a\nval: [")
        expect[kind] = f"dataset file {data} is not valid YAML"
    elif kind == "no-split":
        split = "test"
        expect[kind] = f"dataset file {data} has no 'test' split; add `test:` to it, or pass --split"
    elif kind == "split-path-missing":
        _yaml(data, path=str(root), val="images/nope", names=["thing"])
        expect[kind] = f"dataset file {data}: the val split's {root / 'images' / 'nope'} does not exist"
    elif kind == "split-empty":
        (root / "images" / "empty").mkdir()
        _yaml(data, path=str(root), val="images/empty", names=["thing"])
        expect[kind] = f"dataset file {data}: the val split holds no images"
    elif kind == "nc-vs-names":
        _yaml(data, path=str(root), val="images/val", names=["thing"], nc=2)
        expect[kind] = f"dataset file {data}: nc is 2 but names lists 1 classes; make them agree"
    elif kind == "listed-image-missing":
        (root / "v.txt").write_text("./images/val/val0000.png\n./images/val/gone.png\n")
        _yaml(data, path=str(root), val="v.txt", names=["thing"])
        expect[kind] = f"image {root / 'images' / 'val' / 'gone.png'} listed in {root / 'v.txt'} line 2 does not exist"
    with pytest.raises((AnnotationError, FileNotFoundError)) as e:
        _read(data, split)
    assert expect[kind] in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_calibration_comes_from_the_train_split(tmp_path, tiny_model):
    data = tiny_yolo_dataset(tmp_path / "ds", calib=8)
    cfg = RunConfig(model=tiny_model, data=data, calib_count=5).resolved()
    files, where = calibration_images(cfg)
    assert len(files) == 5 and all("/images/train/" in str(p) for p in files)
    assert where["folder"] == f"{data} (train split)"
    assert files == calibration_images(cfg)[0]  # seeded
    with pytest.raises(ValueError, match=r"--calib-count 9 asks for more images than the train split of .* holds \(8\)"):
        calibration_images(RunConfig(model=tiny_model, data=data, calib_count=9).resolved())
    _yaml(data, path=str(tmp_path / "ds"), val="images/val", names=["thing"])
    with pytest.raises(AnnotationError, match="has no 'train' split; add `train:` to it, or pass --calib-images"):
        calibration_images(RunConfig(model=tiny_model, data=data).resolved())


def test_data_and_images_together_are_refused(tmp_path, tiny_model, tiny_data):
    with pytest.raises(ValueError, match="either data .* or images and annotations"):
        RunConfig(model=tiny_model, data=tmp_path / "d.yaml", images=tiny_data["images"])


def test_a_model_with_other_class_names_is_refused_before_work(tmp_path, tiny_model):
    data = tiny_yolo_dataset(tmp_path / "ds", names=["person"])
    with pytest.raises(AnnotationError, match=r"the model's class names do not match dataset .*data.yaml \(val split\): "
                                              r"the model has 1 class, the data 1 category; model classes not in "
                                              r"the data: 0 'thing'; data categories not in the model: 0 'person'"):
        evaluate_model(tiny_model, DataSpec(data=data), settings=CPU)
    # nc only: names cannot be checked, and the report says so
    _yaml(data, path=str(tmp_path / "ds"), val="images/val", nc=1)
    m = evaluate_model(tiny_model, DataSpec(data=data), settings=CPU)
    assert m["classes"]["how"] == "unchecked" and "nc only" in m["classes"]["note"]


def _int8(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    from procs import prefect_env

    return subprocess.run([sys.executable, str(ROOT / "flows" / "int8.py"), "--run-root", str(tmp_path / "runs"),
                           *args], env=prefect_env(tmp_path / "home"), capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)


def test_the_command_lines_take_data_and_refuse_bad_labels_in_one_line(tmp_path, tiny_model):
    data = tiny_yolo_dataset(tmp_path / "ds")
    r = subprocess.run([sys.executable, str(ROOT / "flows" / "evaluate.py"), "--model", str(tiny_model),
                        "--data", str(data), "--providers", "cpu", "--warmup", "0", "--out", str(tmp_path / "m.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "classes: the model's 1 class names match dataset" in r.stdout
    assert json.loads((tmp_path / "m.json").read_text())["images"] == 6
    label = tmp_path / "ds" / "labels" / "val" / "val0004.txt"
    label.write_text("0 0.5 0.5 0.5 0.5\n3 0.5 0.5 0.5 0.5\n")
    r = _int8(tmp_path, "--model", str(tiny_model), "--data", str(data), "--calib-count", "4")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: label file {label} line 2: class 3 is not a class")
    assert not (tmp_path / "runs").exists() and not list((tmp_path / "home").rglob("*.db"))


def test_other_tasks_are_refused_naming_the_task(tmp_path, tiny_data):
    """A segment, pose, OBB or classify export: refused before any work, naming its task (not a class map)."""
    import onnx

    from tiny import odd_model, tiny_detector

    source = DataSpec(tiny_data["images"], tiny_data["annotations"])
    for task in ("segment", "pose", "obb", "classify"):
        p = tiny_detector(tmp_path / f"{task}.onnx")
        m = onnx.load(str(p))
        m.metadata_props.add(key="task", value=task)  # the tiny detector carries no task of its own
        onnx.save(m, str(p))
        with pytest.raises(ValueError, match=rf"this is a YOLO .* export \(its metadata says task: {task}\); "
                                             rf"yolo-lowbit scores object detection only"):
            evaluate_model(p, source, settings=CPU)
    e2e_seg = odd_model(tmp_path / "e2e.onnx", [1, 300, 38])
    m = onnx.load(str(e2e_seg))
    m.metadata_props.add(key="end2end", value="True")
    onnx.save(m, str(e2e_seg))
    with pytest.raises(ValueError, match=r"its end-to-end output \[1, 300, 38\] has 38 columns, not detection's 6"):
        evaluate_model(e2e_seg, source, settings=CPU)
