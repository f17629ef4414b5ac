import pytest

from flows.int8 import main, parse_args
from tasks.config import ConfigError, build_config


def test_default_model_absent_points_to_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "yolov10m.onnx does not exist" in err and "--demo" in err


def test_cli_options_fill_the_one_config_model(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("calib_count: 8\nquant:\n  method: entropy\n  exclude_nodes: ['/model.23/']\n")
    path, values = parse_args(["--config", str(cfg_file), "--model", "m.onnx", "--method", "max",
                               "--calib-eps", "cuda:0,cpu", "--exclude-op-types", "Add", "Mul",
                               "--providers", "cpu", "--high-precision-dtype", "fp16", "--run-id", "r1"])
    from tasks.config import load_yaml_config

    cfg = build_config(load_yaml_config(path), values)
    assert cfg.calib_count == 8 and cfg.quant.method == "max"  # the command line wins over the file
    assert cfg.quant.exclude_nodes == ["/model.23/"] and cfg.quant.exclude_op_types == ["Add", "Mul"]
    assert cfg.quant.effective_op_types_to_exclude() == ["Add", "Mul", "TopK"]
    assert cfg.eval.providers == ["cpu"] and cfg.quant.high_precision_dtype == "fp16" and cfg.run_id == "r1"
    assert cfg.quant.head_preset is False and cfg.recovery.head_float is True
    _, on = parse_args(["--head-preset", "--accuracy-budget", "0.5", "--no-gate", "--no-bias-correction",
                        "--float-nsr-above", "off", "--float-mac-cap", "0.05", "--no-head-float",
                        "--guard-min-mac-share", "0.9"])
    cfg = build_config(None, on)
    assert cfg.quant.head_preset is True and cfg.accuracy_budget == 0.5 and cfg.max_map_drop is None
    assert cfg.recovery.bias_correction == [] and cfg.recovery.float_nsr_above is None
    assert cfg.recovery.float_mac_cap == 0.05 and cfg.recovery.head_float is False and cfg.min_mac_share("ort-cpu") == 0.9
    assert cfg.targets == ["tensorrt"] and not cfg.ort_cpu.head_preset and cfg.ort_cpu.reduce_range == "auto"
    _, t = parse_args(["--target", "ort-cpu,tensorrt,ort-cpu", "--ort-reduce-range", "off", "--ort-stem-float", "on"])
    cfg = build_config(None, t)
    assert cfg.targets == ["ort-cpu", "tensorrt"] and cfg.ort_cpu.reduce_range == "off"  # order kept, deduplicated
    assert cfg.ort_cpu.stem_float == "on" and cfg.ort_cpu.head_preset is False


@pytest.mark.parametrize("values,match", [
    ({"quant": {"method": "minmax"}}, "quant.method"),
    ({"calib_count": 0}, "calib_count"),
    ({"run_id": "../escape"}, "run_id"),
    ({"calib": "a.npy", "calib_images": "dir"}, "either calib"),
    ({"unknown_option": 1}, "unknown_option"),
    ({"targets": ["tensorrt", "openvino"]}, "targets"),
    ({"targets": []}, "at least one target"),
    ({"quant": {"entropy_impl": "fast"}}, "entropy_impl"),
    ({"recovery": {"bias_correction": ["openvino"]}}, "recovery.bias_correction"),
])
def test_invalid_settings_name_the_setting(values, match):
    with pytest.raises(ConfigError, match=match):
        build_config(None, values)


def test_missing_eval_data_and_unwritable_run_root(tmp_path, tiny_model, tiny_data):
    from tasks.steps import prepare_run

    with pytest.raises(ConfigError, match="--images"):
        build_config(None, {"model": str(tiny_model), "calib_images": str(tmp_path)}).resolved()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # A run root below a regular file cannot be created, whoever runs the test (root included).
    cfg = build_config(None, {"model": str(tiny_model), "images": str(tiny_data["images"]),
                              "annotations": str(tiny_data["annotations"]),
                              "calib_images": str(tiny_data["calib_images"]), "run_root": str(blocker / "runs")})
    with pytest.raises(PermissionError, match="--run-root"):
        prepare_run(cfg)


def test_missing_eval_image_is_refused_before_any_run_folder(tmp_path, tiny_model, tiny_data):
    from tasks.steps import prepare_run

    (tiny_data["images"] / "val0002.png").unlink()
    cfg = build_config(None, {"model": str(tiny_model), "images": str(tiny_data["images"]),
                              "annotations": str(tiny_data["annotations"]),
                              "calib_images": str(tiny_data["calib_images"]), "run_root": str(tmp_path / "runs")})
    with pytest.raises(FileNotFoundError, match="val0002.png"):
        prepare_run(cfg)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
