"""Bounded entropy calibration: the fast KL search equals the plain one, the calibration cache is
ModelOpt's format, and the scales reach the model the way ModelOpt's own cache path puts them."""
import numpy as np
import onnx
import pytest

from tasks.calibration import CalibReader
from tasks.config import QuantSettings
from tasks.entropy import (activation_scales, entropy_amax, entropy_amax_fast, scale_groups,
                           write_calibration_cache)
from tasks.quantize import run_ptq

CAL = np.random.default_rng(0).random((8, 3, 64, 64), dtype=np.float32)


def _hist(rng, kind):
    x = np.abs(rng.normal(0, 1, 50000))
    if kind == "outliers":
        x = np.concatenate([x, rng.normal(0, 30, 25)])
    if kind == "relu":
        x = np.concatenate([x, np.zeros(30000)])
    x = np.abs(x)
    a = float(x.max())
    h = np.bincount(np.minimum((x * 2048 / a).astype(int), 2047), minlength=2048)
    if kind == "gap":
        h[900:1500] = 0
    return h, a


@pytest.mark.parametrize("kind", ["plain", "outliers", "relu", "gap"])
def test_fast_search_picks_the_same_threshold_as_the_loop(kind):
    h, a = _hist(np.random.default_rng(1), kind)
    assert entropy_amax_fast(h, a) == pytest.approx(entropy_amax(h, a), rel=0, abs=1e-12)
    assert 0 < entropy_amax_fast(h, a) <= a


def test_outliers_are_clipped_and_empty_histograms_keep_max():
    h, a = _hist(np.random.default_rng(2), "outliers")
    assert entropy_amax_fast(h, a) < 0.5 * a
    assert entropy_amax_fast(np.zeros(2048, np.int64), 3.0) == 3.0


def test_cache_is_what_modelopt_reads(tmp_path):
    from modelopt.onnx.quantization.calib_utils import import_scales_from_calib_cache

    scales = {"/model.0/act/Mul_output_0": 0.0123, "images": 1 / 255}
    write_calibration_cache(tmp_path / "c.cache", scales)
    got = import_scales_from_calib_cache(str(tmp_path / "c.cache"))
    assert got == {f"{k}_scale": pytest.approx(v, rel=1e-7) for k, v in scales.items()}


def test_scale_groups_are_bit_identical_scales():
    assert sorted(map(sorted, scale_groups({"a": 0.5, "b": 0.5, "c": 0.25}))) == [["a", "b"], ["c"]]


@pytest.mark.slow
def test_entropy_replaces_max_scales_and_matches_modelopt_cache_path(tmp_path, tiny_model):
    from modelopt.onnx.quantization import quantize

    from tasks.quantize import ort_quantization_restored

    mx = run_ptq(tiny_model, "images", CalibReader(CAL, "images"), QuantSettings(calib_eps=["cpu"]),
                 tmp_path / "max.onnx", tmp_path / "max.log")
    ent = run_ptq(tiny_model, "images", CalibReader(CAL, "images"), QuantSettings(calib_eps=["cpu"], method="entropy"),
                  tmp_path / "ent.onnx", tmp_path / "ent.log")
    smax = activation_scales(onnx.load(str(tmp_path / "max.onnx")))
    sent = activation_scales(onnx.load(str(tmp_path / "ent.onnx")))
    assert set(smax) == set(sent) and ent["entropy"]["scales_replaced"] == len(smax)
    assert all(sent[t] <= smax[t] * (1 + 1e-6) for t in smax)  # entropy only ever clips
    assert mx["entropy"] is None and ent["args"]["calibration_method"] == "max"
    cache = tmp_path / "entropy-calibration.cache"
    assert cache.is_file()
    # the same cache through ModelOpt's own calibration_cache_path gives the same activation scales
    with ort_quantization_restored():
        quantize(onnx_path=str(tiny_model), calibration_data_reader=CalibReader(CAL, "images"),
                 calibration_method="max", calibration_cache_path=str(cache), calibration_eps=["cpu"],
                 op_types_to_exclude=["TopK"], high_precision_dtype="fp32", output_path=str(tmp_path / "mo.onnx"))
    smo = activation_scales(onnx.load(str(tmp_path / "mo.onnx")))
    assert smo == pytest.approx(sent, rel=1e-6)
