import numpy as np
import pytest

from tasks.evaluation.decode import DecodeError, decode, detect_format, nms


def test_detect_format_from_shapes():
    assert detect_format((1, 300, 6)) == ("yolov10", None)
    assert detect_format((1, 84, 8400)) == ("yolov8", 80)
    assert detect_format((1, 25200, 85)) == ("yolov5", 80)
    assert detect_format((1, 6300, 6), end2end=False) == ("yolov5", 1)
    assert detect_format((1, 300, 6), end2end=True)[0] == "yolov10"


@pytest.mark.parametrize("shape", [(1, 4, 4), (1, 10), (2, 300, 6, 1), (1, "n", 6)])
def test_unknown_shapes_raise(shape):
    with pytest.raises(DecodeError):
        detect_format(shape)


def test_yolov10_no_nms_threshold_and_order():
    out = np.array([[[0, 0, 10, 10, 0.5, 2], [5, 5, 20, 20, 0.9, 1], [0, 0, 10, 10, 0.0005, 0],
                     [0, 0, 10, 10, 0.6, 2]]], np.float32)
    d = decode(out, "yolov10")
    assert d.scores.tolist() == pytest.approx([0.9, 0.6, 0.5])
    assert d.classes.tolist() == [1, 2, 2]  # overlapping same-class boxes kept: the head is NMS-free


def test_yolov8_decodes_xywh_and_applies_class_aware_nms():
    nc, n = 3, 4
    out = np.zeros((1, 4 + nc, n), np.float32)
    # two overlapping boxes of class 0, one overlapping box of class 1, one far box of class 2
    out[0, :4, 0] = [50, 50, 20, 20]; out[0, 4, 0] = 0.9
    out[0, :4, 1] = [51, 51, 20, 20]; out[0, 4, 1] = 0.8
    out[0, :4, 2] = [50, 50, 20, 20]; out[0, 5, 2] = 0.7
    out[0, :4, 3] = [200, 200, 10, 10]; out[0, 6, 3] = 0.6
    d = decode(out, "yolov8", iou_thres=0.5)
    assert len(d) == 3
    assert d.classes.tolist() == [0, 1, 2]
    assert np.allclose(d.boxes[0], [40, 40, 60, 60])


def test_yolov5_score_is_objectness_times_class():
    out = np.zeros((1, 3, 7), np.float32)  # nc = 2
    out[0, 0] = [10, 10, 4, 4, 0.5, 0.2, 0.8]
    out[0, 1] = [100, 100, 4, 4, 0.9, 0.9, 0.1]
    out[0, 2] = [50, 50, 4, 4, 0.0001, 1.0, 0.0]  # below 0.001 after the product
    d = decode(out, "yolov5")
    assert len(d) == 2
    assert d.scores.tolist() == pytest.approx([0.81, 0.4])
    assert d.classes.tolist() == [0, 1]


def test_max_det_caps_output():
    rng = np.random.default_rng(0)
    n = 2000
    xywh = np.c_[rng.uniform(0, 600, (n, 2)), np.full((n, 2), 5.0)]
    out = np.c_[xywh, rng.uniform(0.1, 1, n), rng.uniform(0, 1, (n, 1))][None].astype(np.float32)
    assert len(decode(out, "yolov5", max_det=300)) == 300


def test_nms_suppresses_by_iou():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5, 300)
    assert keep.tolist() == [0, 2]


def test_zero_detections():
    out = np.zeros((1, 300, 6), np.float32)
    assert len(decode(out, "yolov10")) == 0


@pytest.mark.parametrize("seed", range(5))
def test_block_nms_equals_reference_greedy(seed):
    from tasks.evaluation.decode import greedy_nms_sorted

    rng = np.random.default_rng(seed)
    n = 700  # spans several blocks
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(5, 80, (n, 2))
    boxes = np.c_[xy, xy + wh].astype(np.float32)
    scores = rng.random(n)
    order = np.argsort(-scores, kind="stable")
    ref = sorted(nms(boxes, scores, 0.5, 10 ** 6).tolist())
    mask = greedy_nms_sorted(boxes[order], 0.5)
    assert sorted(order[mask].tolist()) == ref


def test_class_aware_nms_equals_per_class_reference_and_caps_at_max_det():
    from tasks.evaluation.decode import class_aware_nms

    rng = np.random.default_rng(7)
    n = 1500
    xy = rng.uniform(0, 600, (n, 2))
    boxes = np.c_[xy, xy + rng.uniform(5, 60, (n, 2))].astype(np.float32)
    scores = rng.random(n).astype(np.float32)
    classes = rng.integers(0, 5, n)
    ref = []
    for c in range(5):  # reference: plain greedy per class, then the best 300 overall
        idx = np.flatnonzero(classes == c)
        ref += idx[nms(boxes[idx], scores[idx], 0.6, 10 ** 6)].tolist()
    ref = sorted(ref, key=lambda i: (-scores[i], i))[:300]
    d = class_aware_nms(boxes, scores, classes, 0.6, max_det=300)
    assert len(d) == 300
    assert np.allclose(d.scores, scores[ref]) and (d.classes == classes[ref]).all()
