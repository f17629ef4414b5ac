"""Activation-range estimators (tasks/quantization/ranges.py) against hand computations on tiny tensors,
and the scales they give arriving unchanged in ModelOpt's Q/DQ model."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tasks.config import QuantSettings
from tasks.quantization.calibration import CalibReader
from tasks.quantization.entropy import activation_scales, collect_histograms
from tasks.quantization.modelopt_ptq import run_ptq
from tasks.quantization.ranges import QMAX, estimate, folded, mse_amax, percentile_amax

CAL = np.random.default_rng(0).random((8, 3, 64, 64), dtype=np.float32)


def test_folding_adds_the_bins_at_the_same_distance_from_zero():
    assert folded(np.array([1, 2, 3, 4, 5, 6])).tolist() == [7.0, 7.0, 7.0]  # [-3,-2,-1 | 0,1,2] bins


def test_percentile_is_the_edge_where_the_share_is_reached():
    # |x| bins over [0, 10): 90 values in the first bin, 9 in bin 5, 1 in the last
    h = np.zeros(20, np.int64)
    h[10], h[15], h[19] = 90, 9, 1
    assert percentile_amax(h, 10.0, 90) == pytest.approx(1.0)   # 90% inside the first bin
    assert percentile_amax(h, 10.0, 99) == pytest.approx(6.0)   # bin 5 ends at 6
    assert percentile_amax(h, 10.0, 100) == pytest.approx(10.0)


def test_mse_clip_is_the_clip_of_least_squared_error_on_the_values():
    """On 2048 bins, the histogram's clip lies within a couple of bins of the clip that minimises
    the squared error of int8 fake quantisation computed on the values themselves."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 1, 200_000), [20.0, -18.0, 15.0, 19.0, -20.0]])
    a = float(np.abs(x).max())
    hist, _ = np.histogram(x, 2048, range=(-a, a))
    ours = mse_amax(hist, a)

    def err(c):
        s = c / QMAX
        return float(((x - np.clip(np.round(x / s), -QMAX, QMAX) * s) ** 2).mean())
    grid = np.linspace(a / 1024, a, 1024)
    best = grid[int(np.argmin([err(c) for c in grid]))]
    assert ours < a  # the largest outliers are clipped
    assert abs(ours - best) <= 3 * a / 1024 or err(ours) <= err(best) * 1.02


def test_mean_max_averages_each_samples_largest_magnitude(tmp_path):
    """Through the streamed pass: an identity-like model (Relu of -x and x concatenated keeps |x|)."""
    nodes = [helper.make_node("Neg", ["images"], ["n"]), helper.make_node("Relu", ["n"], ["r1"]),
             helper.make_node("Relu", ["images"], ["r2"]), helper.make_node("Sub", ["r2", "r1"], ["out"])]
    g = helper.make_graph(nodes, "id", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "id.onnx"))
    samples = np.array([[1, -2, 0.5, 0], [3, 0, 0, 1], [0, 0, -6, 0]], np.float32)  # maxima 2, 3, 6
    stats, n = collect_histograms(tmp_path / "id.onnx", {"out": 6.0}, CalibReader(samples, "images"), bins=64)
    st = stats["out"]
    assert n == 3 and st["samples"] == 3 and st["absmax_sum"] == pytest.approx(11.0)
    assert estimate("mean-max", st, 6.0) == pytest.approx(11.0 / 3)
    assert estimate("max", st, 6.0) == 6.0 and st["hist"].sum() == 12
    # memory flat in the count: the statistics of one tensor are the same few fields however many samples
    more, _ = collect_histograms(tmp_path / "id.onnx", {"out": 6.0}, CalibReader(np.repeat(samples, 50, 0), "images"),
                                 bins=64)
    assert more["out"]["hist"].shape == st["hist"].shape and set(more["out"]) == set(st)
    with pytest.raises(ValueError, match="unknown range estimator"):
        estimate("median", st, 6.0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mse", "mean-max", "percentile"])
def test_the_estimators_scales_arrive_unchanged_in_the_qdq_model(tmp_path, tiny_model, method):
    from modelopt.onnx.quantization.calib_utils import import_scales_from_calib_cache

    mx = run_ptq(tiny_model, "images", CalibReader(CAL, "images"), QuantSettings(calib_eps=["cpu"], method="max"),
                 tmp_path / "max.onnx", tmp_path / "max.log")
    rec = run_ptq(tiny_model, "images", CalibReader(CAL, "images"), QuantSettings(calib_eps=["cpu"], method=method),
                  tmp_path / "q.onnx", tmp_path / "q.log")
    smax = activation_scales(onnx.load(str(tmp_path / "max.onnx")))
    got = activation_scales(onnx.load(str(tmp_path / "q.onnx")))
    cache = import_scales_from_calib_cache(str(tmp_path / f"{method}-calibration.cache"))
    assert rec["ranges"]["method"] == method and rec["ranges"]["scales_replaced"] == len(smax) and mx["ranges"] is None
    assert set(got) == set(smax) and all(got[t] <= smax[t] * (1 + 1e-6) for t in smax)  # never wider than max
    assert {f"{t}_scale": s for t, s in got.items()} == pytest.approx(cache, rel=1e-7)


@pytest.mark.slow
def test_a_method_sweep_reusing_the_max_and_histogram_passes_builds_the_same_bytes(tmp_path, tiny_model):
    from tasks.quantization.ranges import load_stats, max_amax, save_stats
    from tasks.run.rundir import sha256_file

    def reader():
        return CalibReader(CAL, "images")

    run_ptq(tiny_model, "images", reader(), QuantSettings(calib_eps=["cpu"], method="max"), tmp_path / "max.onnx", tmp_path / "max.log")
    stats = collect_histograms(tiny_model, max_amax(onnx.load(str(tmp_path / "max.onnx"))), reader())
    save_stats(tmp_path / "h.npz", *stats)
    loaded = load_stats(tmp_path / "h.npz")
    assert loaded[1] == stats[1] == len(CAL)
    for method in ("mse", "percentile"):
        st = QuantSettings(calib_eps=["cpu"], method=method)
        (tmp_path / "fresh").mkdir(exist_ok=True)
        (tmp_path / "reused").mkdir(exist_ok=True)
        fresh = run_ptq(tiny_model, "images", reader(), st, tmp_path / "fresh" / "q.onnx", tmp_path / "fresh" / "q.log")
        reused = run_ptq(tiny_model, "images", reader(), st, tmp_path / "reused" / "q.onnx", tmp_path / "reused" / "q.log",
                         max_model=tmp_path / "max.onnx", stats=loaded)
        assert not fresh["ranges"]["reused_stats"] and reused["ranges"]["reused_stats"]
        assert sha256_file(tmp_path / "fresh" / "q.onnx") == sha256_file(tmp_path / "reused" / "q.onnx")
    with pytest.raises(ValueError, match="not collected for this model"):
        run_ptq(tiny_model, "images", reader(), QuantSettings(calib_eps=["cpu"], method="mse"), tmp_path / "x.onnx",
                tmp_path / "x.log", max_model=tmp_path / "max.onnx", stats=({"other": loaded[0][next(iter(loaded[0]))]}, 8))


@pytest.mark.slow
def test_the_estimators_of_one_calibration_set_share_one_max_and_one_histogram_pass(tmp_path, tiny_model, tiny_data):
    from tasks.config import RunConfig
    from tasks.pipeline import prepare_run
    from tasks.steps.calibrate import step_calibration
    from tasks.targets.tensorrt import step_quantize

    cfg = RunConfig.model_validate({"model": str(tiny_model), "images": str(tiny_data["images"]),
                                    "annotations": str(tiny_data["annotations"]),
                                    "calib_images": str(tiny_data["calib_images"]), "calib_count": 8,
                                    "targets": ["tensorrt"], "run_root": str(tmp_path / "runs")})
    ctx = prepare_run(cfg)
    calib = step_calibration(ctx)
    ranges = {}
    for method in ("mse", "percentile", "mean-max"):
        q = step_quantize(ctx, calib, cfg.quant.model_copy(update={"method": method, "calib_eps": ["cpu"]}), publish=False)
        ranges[method] = q["config"]["ranges"]
    assert [r["max_pass_cached"] for r in ranges.values()] == [False, True, True]
    assert [r["histogram_pass_cached"] for r in ranges.values()] == [False, True, True]
    assert all(r["reused_stats"] and r["samples"] == 8 and r["calibration_s"] >= r["max_pass_s"] for r in ranges.values())
    # the cost recorded is the fresh one: the passes' own wall times, whichever run paid for them
    assert len({(r["max_pass_s"], r["histogram_pass_s"]) for r in ranges.values()}) == 1
