"""The bootstrap's accumulation against pycocotools itself, on a small random COCO set built here."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.evaluation.bootstrap import (
    bootstrap_record, match_tables, paired_interval, replicate_maps, resample_weights,
)
from tasks.evaluation.coco_eval import evaluate_detections


def _dataset(n_images: int, seed: int, copies: list[int] | None = None):
    """Random boxes on random images (3 categories, one crowd box) and noisy detections of them, some
    false. `copies[i]` repeats image i that many times under new ids (what a resample means)."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    base = []
    for i in range(n_images):
        boxes = []
        for _ in range(int(rng.integers(0, 6))):
            x, y = rng.uniform(0, 500, 2)
            w, h = rng.uniform(8, 120, 2)
            boxes.append(([float(x), float(y), float(w), float(h)], int(rng.integers(1, 4)), int(rng.random() < 0.05)))
        preds = []
        for (b, c, _crowd) in boxes:
            if rng.random() < 0.8:
                j = rng.normal(0, 6, 4)
                preds.append(([b[0] + j[0], b[1] + j[1], max(2.0, b[2] + j[2]), max(2.0, b[3] + j[3])],
                              c if rng.random() < 0.9 else int(rng.integers(1, 4)), float(rng.uniform(0.2, 1))))
        for _ in range(int(rng.integers(0, 8))):
            x, y = rng.uniform(0, 500, 2)
            preds.append(([float(x), float(y), 40.0, 40.0], int(rng.integers(1, 4)), float(rng.uniform(0.001, 0.6))))
        base.append((boxes, preds))
    copies = copies or [1] * n_images
    img_id, ann_id = 0, 0
    for i, (boxes, preds) in enumerate(base):
        for _ in range(copies[i]):
            img_id += 1
            images.append({"id": img_id, "file_name": f"{img_id}.jpg", "width": 640, "height": 640})
            for b, c, crowd in boxes:
                ann_id += 1
                anns.append({"id": ann_id, "image_id": img_id, "category_id": c, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": crowd})
            dets += [{"image_id": img_id, "category_id": c, "bbox": [round(v, 3) for v in b], "score": round(s, 6)}
                     for b, c, s in preds]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, dets


def _cocoeval(coco, dets):
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_unit_weights_reproduce_cocoeval():
    coco, dets = _dataset(40, seed=1)
    ev = _cocoeval(coco, dets)
    tables, thr, ids = match_tables(ev)
    reps = replicate_maps(tables, thr, np.ones((1, len(ids))))
    assert reps["map50_95"][0] == pytest.approx(ev.stats[0], abs=1e-12)
    assert reps["map50"][0] == pytest.approx(ev.stats[1], abs=1e-12)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_a_resample_equals_cocoeval_on_the_images_repeated(seed):
    """Weight w on image i = pycocotools on a set where image i appears w times (0: left out)."""
    coco, dets = _dataset(30, seed=seed)
    ev = _cocoeval(coco, dets)
    tables, thr, ids = match_tables(ev)
    w = resample_weights(len(ids), 1, seed=seed)[0]
    reps = replicate_maps(tables, thr, w[None])
    coco_r, dets_r = _dataset(30, seed=seed, copies=[int(c) for c in w])
    ev_r = _cocoeval(coco_r, dets_r)
    assert reps["map50_95"][0] == pytest.approx(ev_r.stats[0], abs=1e-9)
    assert reps["map50"][0] == pytest.approx(ev_r.stats[1], abs=1e-9)


def test_resamples_are_a_function_of_seed_count_and_images():
    a, b = resample_weights(50, 20, 7), resample_weights(50, 20, 7)
    assert np.array_equal(a, b) and a.sum(axis=1).tolist() == [50.0] * 20
    assert not np.array_equal(a, resample_weights(50, 20, 8))


def test_paired_interval_of_a_model_against_itself_is_zero_and_covers_a_shift():
    coco, dets = _dataset(60, seed=5)
    ev = _cocoeval(coco, dets)
    rec = bootstrap_record(ev, 200, seed=0)
    assert paired_interval(rec, rec, "map50_95") == [0.0, 0.0]
    worse = [dict(d, score=d["score"] * (0.3 if k % 3 == 0 else 1.0)) for k, d in enumerate(dets)]
    rec_w = bootstrap_record(_cocoeval(coco, worse), 200, seed=0)
    lo, hi = paired_interval(rec, rec_w, "map50_95")
    point = _cocoeval(coco, worse).stats[0] - ev.stats[0]
    assert lo <= point <= hi and lo < hi
    # resampled differently: no pairing, no interval
    assert paired_interval(rec, bootstrap_record(ev, 200, seed=1), "map50_95") is None


def test_evaluate_detections_records_the_replicates():
    coco, dets = _dataset(20, seed=6)
    out = evaluate_detections(coco, dets, sorted(coco.getImgIds()), bootstrap=(50, 0))
    bs = out["bootstrap"]
    assert bs["resamples"] == 50 and len(bs["map50_95"]) == 50 and bs["seed"] == 0
    # the replicates scatter around the point estimate
    assert min(bs["map50_95"]) < out["stats"]["map50_95"] < max(bs["map50_95"])
    assert "bootstrap" not in evaluate_detections(coco, dets, sorted(coco.getImgIds()))


def test_the_budget_reading_of_an_interval():
    from tasks.evaluation.bootstrap import budget_reading

    assert budget_reading(-0.002, [-0.006, 0.002], 1.0, 300)["reading"] == "within"
    assert budget_reading(-0.02, [-0.025, -0.015], 1.0, 300)["reading"] == "over"
    r = budget_reading(-0.008, [-0.012, -0.004], 1.0, 79)  # -0.8 pt [-1.2, -0.4] against 1 point
    # half-width 0.4 pt at 79 images, 0.2 pt from the budget: 79 * (0.4 / 0.2)^2 images would tell
    assert r == {"reading": "cannot tell", "images_needed": 316}
    assert budget_reading(-0.01, [-0.012, -0.008], 1.0, 79)["images_needed"] is None  # on the line
    assert budget_reading(-0.01, None, 1.0, 79) is None and budget_reading(-0.01, [-0.02, 0.0], None, 79) is None


def test_the_report_states_the_interval_and_when_the_subset_cannot_tell():
    from tasks.steps.report import console_table, regression_gate

    def side(m):
        return {"map50_95": m, "map50": m, "latency_ms": {"p50": 1.0, "p90": 1.0}, "provider": "CPU", "images": 79,
                "detections": 10}
    s = {"fp32": side(0.5), "int8": side(0.492), "quantization": {"target": "tensorrt"},
         "delta": {"map50_95": -0.008, "map50": -0.008, "map50_95_ci": [-0.012, -0.004], "map50_ci": None,
                   "latency_ratio": 1.0}}
    s["gate"] = regression_gate(s, 1.0)
    assert s["gate"]["passed"] and s["gate"]["intervals"]["tensorrt"]["reading"] == "cannot tell"
    text = console_table(s)
    assert "-0.80 [-1.20, -0.40]" in text
    assert "this subset cannot tell whether the drop is within the budget; about 316 images would" in text
