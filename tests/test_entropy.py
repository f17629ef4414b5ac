"""Bounded entropy calibration: ORT's own threshold on a fixed-size histogram, the calibration
cache is ModelOpt's format, and the scales reach the model the way ModelOpt's cache path puts them."""
import numpy as np
import onnx
import pytest

from tasks.quantization.calibration import CalibReader
from tasks.config import QuantSettings
from tasks.quantization.entropy import activation_scales, ort_entropy_threshold, scale_groups, write_calibration_cache
from tasks.quantization.modelopt_ptq import run_ptq

CAL = np.random.default_rng(0).random((8, 3, 64, 64), dtype=np.float32)


def _sample(rng, kind):
    x = rng.normal(0.3, 1, 100000)
    if kind == "outliers":
        x = np.concatenate([x, rng.normal(0, 30, 40)])
    if kind == "silu":
        x = np.maximum(x, -0.28)
    if kind == "exp":
        x = rng.exponential(1, 100000)
    return x.astype(np.float32)


@pytest.mark.parametrize("kind", ["plain", "outliers", "silu", "exp"])
def test_threshold_is_onnxruntimes_own_on_the_same_histogram(kind):
    from onnxruntime.quantization.calibrate import HistogramCollector

    x = _sample(np.random.default_rng(1), kind)
    a = float(np.abs(x).max())
    hist, edges = np.histogram(x, 2048, range=(-a, a))
    ort = HistogramCollector("entropy", symmetric=True, num_bins=2048, num_quantized_bins=128, percentile=99.99,
                             scenario="same")
    lo, hi = ort.get_entropy_threshold((hist, edges.astype(np.float32), np.float32(x.min()), np.float32(x.max()),
                                        np.float32(a)), 128)
    # first_amax 0: ORT's search from its smallest window, as when its histogram began at this range
    ours = ort_entropy_threshold(hist, a, 0.0, float(x.min()), float(x.max()))
    assert ours == pytest.approx(max(abs(float(lo)), abs(float(hi))), rel=1e-6)


def test_search_starts_at_the_first_samples_magnitude():
    x = _sample(np.random.default_rng(2), "outliers")
    a = float(np.abs(x).max())
    hist, _ = np.histogram(x, 2048, range=(-a, a))
    free = ort_entropy_threshold(hist, a, 0.0, float(x.min()), float(x.max()))
    floored = ort_entropy_threshold(hist, a, 0.8 * a, float(x.min()), float(x.max()))
    assert free < 0.5 * a and floored >= 0.8 * a - 1e-6  # outliers clipped, unless the first sample had them
    assert ort_entropy_threshold(np.zeros(2048, np.int64), 3.0, 1.0, 0.0, 0.0) == 3.0


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

    from tasks.quantization.modelopt_ptq import ort_quantization_restored

    mx = run_ptq(tiny_model, "images", CalibReader(CAL, "images"), QuantSettings(calib_eps=["cpu"], method="max"),
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
