import json
import re

import pytest

from conftest import shared_path
from tasks.evaluation.classes import match_classes
from tasks.evaluation.coco_eval import AnnotationError, SubsetError, evaluate_detections, load_coco, select_subset


def _write(tmp_path, data, name="a.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


def _coco(n=5, cats=(3, 9, 1)):
    return {"images": [{"id": 10 + i, "file_name": f"im{i}.jpg", "width": 50, "height": 40} for i in range(n)],
            "annotations": [{"id": i + 1, "image_id": 10 + i, "category_id": cats[0], "bbox": [1, 1, 10, 10]}
                            for i in range(n)],
            "categories": [{"id": c, "name": f"c{c}"} for c in cats]}


def _entry(data, key, i, **fields):
    data[key][i].update(fields)
    return data


def _lacking(data, key, i, field):
    del data[key][i][field]
    return data


def _names(coco):
    return {c["id"]: c["name"] for c in coco.dataset["categories"]}


def test_without_model_names_classes_are_sorted_ids_and_the_count_is_checked(tmp_path):
    coco = load_coco(_write(tmp_path, _coco()))
    m = match_classes(_names(coco), None, 3)
    assert m.cat_ids == [1, 3, 9] and m.how == "unchecked" and "could not be checked" in m.note
    assert match_classes(_names(coco), None, None).cat_ids == [1, 3, 9]
    with pytest.raises(AnnotationError, match="predicts 80 classes"):
        match_classes(_names(coco), None, 80)
    assert match_classes(_names(coco), None, 2, explicit=[9, 3]).cat_ids == [9, 3]
    with pytest.raises(AnnotationError, match="does not have"):
        match_classes(_names(coco), None, 2, explicit=[9, 4])


def test_model_names_match_in_order_by_name_or_are_refused():
    data = {1: "c1", 3: "c3", 9: "c9"}
    same = match_classes(data, {0: "c1", 1: "c3", 2: "c9"}, 3)
    assert same.cat_ids == [1, 3, 9] and same.how == "names-in-order"
    moved = match_classes(data, {0: "c9", 1: "c1", 2: "c3"}, 3)
    assert moved.cat_ids == [9, 1, 3] and moved.how == "by-name" and "another order" in moved.note
    # case and spacing are not a different class
    assert match_classes(data, {0: "C1", 1: " c3", 2: "c9"}, 3).how == "names-in-order"
    with pytest.raises(AnnotationError, match=r"model classes not in the data: 2 'dog'.*data categories not in the "
                                              r"model: 9 'c9'.*--class-map"):
        match_classes(data, {0: "c1", 1: "c3", 2: "dog"}, 3)
    with pytest.raises(AnnotationError, match="the model has 2 classes, the data 3 categories"):
        match_classes(data, {0: "c1", 1: "c3"}, 2, data_label="the data")
    # an explicit map wins over names that differ
    assert match_classes(data, {0: "x", 1: "y", 2: "z"}, 3, explicit=[3, 1, 9]).how == "explicit"


def test_coco80_names_against_the_91_id_file_keep_the_standard_map():
    """Ultralytics' 80 COCO names are COCO 2017's, so the standard 80 -> 91 map comes out of the name check."""
    import onnx

    from tasks.evaluation.evaluate import EvalSettings, resolve_format

    coco = load_coco(shared_path("data/coco-val2017-mini/annotations/instances_val2017.json"))
    model = onnx.load(str(shared_path("models/yolov10s-coco/yolov10s.onnx")), load_external_data=False)
    _, nc, info = resolve_format(model, EvalSettings())
    m = match_classes(_names(coco), info["names"], nc)
    assert m.how == "names-in-order" and len(m.cat_ids) == 80
    assert m.cat_ids[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13] and m.cat_ids[-1] == 90


def test_subset_selection(tmp_path):
    coco = load_coco(_write(tmp_path, _coco(n=10)))
    assert select_subset(coco, None) == list(range(10, 20))
    assert select_subset(coco, 3) == [10, 11, 12]
    assert select_subset(coco, "4") == [10, 11, 12, 13]
    r1, r2 = select_subset(coco, "random:4", seed=1), select_subset(coco, "random:4", seed=1)
    assert r1 == r2 and len(set(r1)) == 4 and set(r1) <= set(range(10, 20))
    assert {tuple(select_subset(coco, "random:4", seed=s)) for s in range(5)} != {tuple(r1)}
    f = _write(tmp_path, "# ids and names\n12\nim5.jpg\nim7\n", "subset.txt")
    assert select_subset(coco, str(f)) == [12, 15, 17]


def test_empty_and_unknown_subsets_fail(tmp_path):
    coco = load_coco(_write(tmp_path, _coco()))
    with pytest.raises(SubsetError, match="selects no image"):
        select_subset(coco, 0)
    empty = _write(tmp_path, "# nothing\n", "empty.txt")
    with pytest.raises(SubsetError, match="selects no image"):
        select_subset(coco, str(empty))
    bad = _write(tmp_path, "999\n", "bad.txt")
    with pytest.raises(SubsetError, match="999"):
        select_subset(coco, str(bad))
    with pytest.raises(SubsetError):
        select_subset(coco, "not-a-file.txt")
    with pytest.raises(SubsetError, match="is a folder"):
        select_subset(coco, str(tmp_path))
    binary = tmp_path / "ids.bin"
    binary.write_bytes(b"\xff\xfe\x81")
    with pytest.raises(SubsetError, match="is not text"):
        select_subset(coco, str(binary))
    with pytest.raises(SubsetError, match="whole number"):
        select_subset(coco, "random:ten")


@pytest.mark.parametrize("subset,fix", [(6, "--subset 5 or fewer"), ("6", "--subset 5 or fewer"),
                                        ("random:6", "--subset random:5 or fewer")])
def test_a_subset_larger_than_the_annotation_file_is_refused_not_cut(tmp_path, subset, fix):
    path = _write(tmp_path, _coco(n=5))
    coco = load_coco(path)
    with pytest.raises(SubsetError, match=re.escape(f"subset {subset} asks for more images than annotation file "
                                                    f"{path} lists (5); pass {fix}, or omit --subset to evaluate all")):
        select_subset(coco, subset, label=f"annotation file {path}")
    assert len(select_subset(coco, str(subset).replace("6", "5"), label=f"annotation file {path}")) == 5  # all of them is fine


@pytest.mark.parametrize("content,match", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a COCO"),
    (json.dumps({"images": []}), "missing annotations, categories"),
    (json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}), "lists no images"),
    (json.dumps({**_coco(), "images": {"a": 1}}), "images is not a list"),
    (json.dumps({**_coco(), "images": [1, 2]}), "images entry 0 is 1, not an object"),
    (json.dumps(_entry(_coco(), "images", 2, width="50")), "images entry 2 has width '50'"),
    (json.dumps(_entry(_coco(), "images", 1, id=[11])), "images entry 1 has id \\[11\\]"),
    (json.dumps(_entry(_coco(), "images", 4, file_name=None)), "images entry 4 has file_name None"),
    (json.dumps(_entry(_coco(), "annotations", 3, bbox=5)), "annotations entry 3 has bbox 5"),
    (json.dumps(_entry(_coco(), "annotations", 1, bbox=[1, 2, "3", 4])), "annotations entry 1 has bbox"),
    (json.dumps(_entry(_coco(), "annotations", 2, image_id="12")), "annotations entry 2 has image_id '12'"),
    (json.dumps(_lacking(_coco(), "annotations", 2, "category_id")), "annotations entry 2 lacks category_id"),
])
def test_non_coco_annotation_files(tmp_path, content, match):
    with pytest.raises(AnnotationError, match=match):
        load_coco(_write(tmp_path, content))


def test_annotation_referring_to_missing_image(tmp_path):
    d = _coco()
    d["annotations"][0]["image_id"] = 12345
    with pytest.raises(AnnotationError, match="unknown image 12345"):
        load_coco(_write(tmp_path, d))


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco(tmp_path / "nope.json")


def test_zero_detections_give_zero_map(tmp_path):
    coco = load_coco(_write(tmp_path, _coco()))
    r = evaluate_detections(coco, [], [10, 11])
    assert r["stats"]["map50_95"] == 0.0 and r["detections"] == 0 and len(r["stats"]) == 12


def test_perfect_detections_score_one(tmp_path):
    coco = load_coco(_write(tmp_path, _coco()))
    dets = [{"image_id": 10 + i, "category_id": 3, "bbox": [1, 1, 10, 10], "score": 0.9} for i in range(5)]
    r = evaluate_detections(coco, dets, [10, 11, 12, 13, 14])
    assert r["stats"]["map50_95"] == pytest.approx(1.0)
    assert r["per_class_ap"] == {"c3": pytest.approx(1.0)}
    # restricted to a subset: only those images count
    r2 = evaluate_detections(coco, dets[:2], [10, 11])
    assert r2["stats"]["map50_95"] == pytest.approx(1.0)
