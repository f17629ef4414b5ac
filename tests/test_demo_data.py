import hashlib
import json


from tasks.evaluation.coco_eval import load_coco
from tasks.demo_data import CATEGORIES, write_split


def _digest(root, split):
    h = hashlib.sha256()
    for p in sorted((root / split / "images").iterdir()):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_pixels_and_json_different_seed_differs(tmp_path):
    a = write_split(tmp_path / "a", "val", 6, seed=3)
    b = write_split(tmp_path / "b", "val", 6, seed=3)
    c = write_split(tmp_path / "c", "val", 6, seed=4)
    assert a.read_text() == b.read_text()
    assert _digest(tmp_path / "a", "val") == _digest(tmp_path / "b", "val")
    assert a.read_text() != c.read_text()
    assert _digest(tmp_path / "a", "val") != _digest(tmp_path / "c", "val")


def test_coco_format_loads_and_boxes_lie_inside(tmp_path):
    ann = write_split(tmp_path, "val", 12, seed=0)
    coco = load_coco(ann)
    data = json.loads(ann.read_text())
    ids = [c["id"] for c in data["categories"]]
    assert ids == [c["id"] for c in CATEGORIES] and ids != list(range(len(ids)))
    assert len(data["annotations"]) > 12
    for a in data["annotations"]:
        im = coco.imgs[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= im["width"] and y + h <= im["height"]
        assert a["iscrowd"] == 0 and a["area"] > 0
    used = {a["category_id"] for a in data["annotations"]}
    assert len(used) >= 4


def test_splits_do_not_overlap(tmp_path):
    v = json.loads(write_split(tmp_path, "val", 4, seed=0).read_text())
    write_split(tmp_path, "calib", 4, seed=0, annotate=False)
    names_v = {im["file_name"] for im in v["images"]}
    names_c = {p.name for p in (tmp_path / "calib" / "images").iterdir()}
    assert not names_v & names_c
    hv = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "val" / "images").iterdir()}
    hc = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "calib" / "images").iterdir()}
    assert not hv & hc
