import json

import onnx
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
                               "--set", "quant.calib_eps=cuda:0,cpu", "--exclude-op-types", "Add", "Mul",
                               "--set", "eval.providers=cpu", "--set", "quant.high_precision_dtype=fp16",
                               "--run-id", "r1"])
    from tasks.config import load_yaml_config

    cfg = build_config(load_yaml_config(path), values)
    assert cfg.calib_count == 8 and cfg.quant.method == "max"  # the command line wins over the file
    assert cfg.quant.exclude_nodes == ["/model.23/"] and cfg.quant.exclude_op_types == ["Add", "Mul"]
    assert cfg.quant.effective_op_types_to_exclude() == ["Add", "Mul", "TopK"]
    assert cfg.eval.providers == ["cpu"] and cfg.quant.high_precision_dtype == "fp16" and cfg.run_id == "r1"
    assert cfg.quant.calib_eps == ["cuda:0", "cpu"] and cfg.recovery.head_float is True
    _, on = parse_args(["--accuracy-budget", "0.5", "--no-gate", "--set", "recovery.float_mac_cap=0.05",
                        "--set", "recovery.head_float=off", "--set", "guard_min_mac_share=0.9"])
    cfg = build_config(None, on)
    assert cfg.accuracy_budget == 0.5 and cfg.max_map_drop is None
    assert cfg.recovery.float_mac_cap == 0.05 and cfg.recovery.head_float is False and cfg.min_mac_share("ort-cpu") == 0.9
    assert cfg.targets == ["tensorrt"] and cfg.ort_cpu.reduce_range == "auto"
    _, t = parse_args(["--target", "ort-cpu,tensorrt,ort-cpu", "--set", "ort_cpu.reduce_range=off",
                       "--set", "guard_min_mac_share=tensorrt=0.9,ort-cpu=0.8", "--set", "eval.threads=off"])
    cfg = build_config(None, t)
    assert cfg.targets == ["ort-cpu", "tensorrt"] and cfg.ort_cpu.reduce_range == "off"  # order kept, deduplicated
    assert cfg.min_mac_share("tensorrt") == 0.9 and cfg.min_mac_share("ort-cpu") == 0.8 and cfg.eval.threads is None


def test_help_shows_the_settings_a_user_sets_and_names_the_rest(capsys):
    """At most 27 options (the data comes in two forms: --images/--annotations or --data/--split); every other
    setting is a --set key that --help-all lists."""
    from tasks.config import RunConfig
    from tasks.options import leaf_fields

    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    options = [line for line in out.splitlines() if line.startswith("  --")]
    assert len(options) <= 27, options
    assert "--set KEY=VALUE" in out and "--help-all" in out
    with pytest.raises(SystemExit):
        parse_args(["--help-all"])
    listing = capsys.readouterr().out
    for path, _ in leaf_fields(RunConfig):
        assert f"  {path}=" in listing, path


@pytest.mark.parametrize("argv,message", [
    (["--ort-reduce-range", "off"], "option --ort-reduce-range is now --set ort_cpu.reduce_range=VALUE"),
    (["--no-ort-per-channel"], "option --no-ort-per-channel is now --set ort_cpu.per_channel=off"),
    (["--ort-silu-floor"], "option --ort-silu-floor was removed: not confirmed on 300 images"),
    (["--set", "ort_cpu.reduce_rang=off"], "no setting 'ort_cpu.reduce_rang'; did you mean ort_cpu.reduce_range"),
    (["--set", "eval.threads"], "is not KEY=VALUE"),
    (["--set", "ort_cpu.per_channel=maybe"], "'maybe' is not on or off"),
])
def test_an_old_or_mistyped_option_is_refused_with_how_to_say_it(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.parametrize("values,match", [
    ({"quant": {"method": "minmax"}}, "quant.method"),
    ({"calib_count": 0}, "calib_count"),
    ({"run_id": "../escape"}, "run_id"),
    ({"calib": "a.npy", "calib_images": "dir"}, "either calib"),
    ({"unknown_option": 1}, "unknown_option"),
    ({"targets": ["tensorrt", "tflite"]}, "targets"),
    ({"targets": []}, "at least one target"),
    ({"quant": {"entropy_impl": "modelopt"}}, "quant.entropy_impl"),  # removed: refused, not ignored
    ({"recovery": {"bias_correction": ["openvino"]}}, "recovery.bias_correction"),
    ({"openvino": {"preset": "fast"}}, "openvino.preset"),
])
def test_invalid_settings_name_the_setting(values, match):
    with pytest.raises(ConfigError, match=match):
        build_config(None, values)


def test_missing_eval_data_and_unwritable_run_root(tmp_path, tiny_model, tiny_data):
    from tasks.pipeline import prepare_run

    with pytest.raises(ConfigError, match="--images"):
        build_config(None, {"model": str(tiny_model), "calib_images": str(tmp_path)}).resolved()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # A run root below a regular file cannot be created, whoever runs the test (root included).
    cfg = build_config(None, {"model": str(tiny_model), "images": str(tiny_data["images"]),
                              "annotations": str(tiny_data["annotations"]), "calib_images": str(tiny_data["calib_images"]),
                              "calib_count": 8, "run_root": str(blocker / "runs")})
    with pytest.raises(PermissionError, match="--run-root"):
        prepare_run(cfg)


def test_missing_eval_image_is_refused_before_any_run_folder(tmp_path, tiny_model, tiny_data):
    from tasks.pipeline import prepare_run

    (tiny_data["images"] / "val0002.png").unlink()
    cfg = build_config(None, {"model": str(tiny_model), "images": str(tiny_data["images"]),
                              "annotations": str(tiny_data["annotations"]), "calib_images": str(tiny_data["calib_images"]),
                              "calib_count": 8, "run_root": str(tmp_path / "runs")})
    with pytest.raises(FileNotFoundError, match="val0002.png"):
        prepare_run(cfg)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _bad_input(kind, tmp_path, tiny_model, tiny_data):
    """(values, message) for one kind of bad input a new user makes."""
    from tiny import odd_model

    ann = tiny_data["annotations"]
    base = {"--model": str(tiny_model), "--images": str(tiny_data["images"]), "--annotations": str(ann),
            "--calib-images": str(tiny_data["calib_images"]), "--calib-count": "8"}  # the folder holds 8 images
    if kind == "corrupt-model":
        bad = tmp_path / "cut.onnx"
        bad.write_bytes(tiny_model.read_bytes()[:200])
        return {**base, "--model": str(bad)}, "is not a valid ONNX model"
    if kind == "calib-images-is-a-file":
        return {**base, "--calib-images": str(tiny_model)}, "is a file, not a folder; pass --calib-images"
    if kind == "annotations-not-json":
        bad = tmp_path / "ann.json"
        bad.write_text("images: []\n")
        return {**base, "--annotations": str(bad)}, "is not JSON"
    if kind == "subset-selects-nothing":
        ids = tmp_path / "ids.txt"
        ids.write_text("# nothing chosen\n")
        return {**base, "--subset": str(ids)}, "selects no image"
    # Over-asks: more images than there are is refused, never cut to what there is.
    if kind == "subset-over-ask":
        return {**base, "--subset": "7"}, (f"subset 7 asks for more images than annotation file {ann} lists (6); "
                                           f"pass --subset 6 or fewer, or omit --subset to evaluate all")
    if kind == "random-subset-over-ask":
        return {**base, "--subset": "random:7"}, (f"subset random:7 asks for more images than annotation file {ann} "
                                                  f"lists (6); pass --subset random:6 or fewer, or omit --subset")
    if kind == "calib-count-over-ask":
        return {**base, "--calib-count": "9"}, (f"--calib-count 9 asks for more images than calibration folder "
                                                f"{tiny_data['calib_images']} holds (8); pass --calib-count 8 or fewer")
    if kind == "output-not-yolo":
        bad = odd_model(tmp_path / "flat.onnx", [1, 10])
        return {**base, "--model": str(bad)}, f"model {bad}: output shape [1, 10] is not a YOLO detection output"
    # Inputs whose checks used to end in a traceback (an exception no check expected).
    if kind == "output-rank-4":
        bad = odd_model(tmp_path / "map.onnx", [1, 5, 5, 5])
        return {**base, "--model": str(bad)}, "output shape [1, 5, 5, 5] is not a YOLO detection output"
    if kind == "int64-input":
        bad = odd_model(tmp_path / "int.onnx", [1, 2, 6], in_type=onnx.TensorProto.INT64)
        return {**base, "--model": str(bad)}, "input 'images' is int64; the run feeds float32 images"
    if kind == "bbox-not-a-list":
        data = json.loads(ann.read_text())
        data["annotations"][2]["bbox"] = 5
        del data["annotations"][2]["area"]
        bad = tmp_path / "bbox.json"
        bad.write_text(json.dumps(data))
        return {**base, "--annotations": str(bad)}, f"annotation file {bad}: annotations entry 2 has bbox 5"
    if kind == "width-a-string":
        data = json.loads(ann.read_text())
        data["images"][0]["width"] = "64"
        bad = tmp_path / "width.json"
        bad.write_text(json.dumps(data))
        return {**base, "--annotations": str(bad)}, "images entry 0 has width '64'; image sizes are positive integers"
    if kind == "subset-not-text":
        ids = tmp_path / "ids.bin"
        ids.write_bytes(b"\xff\xfe\x81")
        return {**base, "--subset": str(ids)}, f"subset file {ids} is not text"
    if kind == "subset-random-not-a-number":
        return {**base, "--subset": "random:ten"}, "subset 'random:ten' is not random:N with a whole number N"
    if kind == "config-not-utf8":
        cfg = tmp_path / "run.yaml"
        cfg.write_bytes(b"calib_count: 8\n\xff\xfe")
        return {**base, "--config": str(cfg)}, f"config file {cfg} is not valid YAML"
    if kind == "config-share-a-list":
        cfg = tmp_path / "run.yaml"
        cfg.write_text("guard_min_mac_share: {tensorrt: [0.9]}\n")
        return {**base, "--config": str(cfg)}, "guard_min_mac_share: a share between 0 and 1"
    # Content checks, before any work: a tensor on the 0-255 scale, an image that does not decode.
    if kind == "calib-tensor-0-255":
        import numpy as np

        npy = tmp_path / "calib.npy"
        np.save(npy, np.full((2, 3, 64, 64), 200.0, dtype=np.float32))
        base.pop("--calib-images")
        base.pop("--calib-count")
        return {**base, "--calib": str(npy)}, "looks un-normalised (0-255); divide by 255"
    if kind == "calib-image-undecodable":
        bad = tiny_data["calib_images"] / "cal0003.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        return base, f"calibration image {bad} cannot be decoded"
    if kind == "fp16-without-tensorrt":
        return {**base, "--target": "ort-cpu", "--set": "quant.high_precision_dtype=fp16"}, (
            "quant.high_precision_dtype=fp16 makes the tensorrt model's float parts float16 (for a TensorRT engine); "
            "the targets ort-cpu run their own float precision. Add --target tensorrt, or drop the setting")
    if kind == "fp16-with-reconstruct":
        return {**base, "--reconstruct": "on", "--set": "quant.high_precision_dtype=fp16"}, (
            "--reconstruct on learns on the float32 Q/DQ model, which quant.high_precision_dtype=fp16 turns into")
    if kind == "calib-archive-not-a-zip":
        npz = tmp_path / "calib.npz"
        npz.write_bytes(b"PK\x03\x04 not a zip")
        base.pop("--calib-images")
        return {**base, "--calib": str(npz)}, f"calibration tensor {npz} is truncated or corrupt"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["corrupt-model", "calib-images-is-a-file", "annotations-not-json",
                                  "subset-selects-nothing", "subset-over-ask", "random-subset-over-ask",
                                  "calib-count-over-ask", "output-not-yolo", "output-rank-4", "int64-input",
                                  "bbox-not-a-list", "width-a-string", "subset-not-text", "subset-random-not-a-number",
                                  "config-not-utf8", "config-share-a-list", "calib-archive-not-a-zip",
                                  "calib-tensor-0-255", "calib-image-undecodable", "fp16-without-tensorrt",
                                  "fp16-with-reconstruct"])
def test_bad_input_is_refused_before_a_prefect_server_starts(kind, tmp_path, tiny_model, tiny_data):
    """As a user runs it: the one-line error with no Prefect database (no server ever started) and no
    run folder. How fast it comes is bench/refusal.py's figure, not an assertion here: a busy machine
    is slower, not wrong."""
    import subprocess
    import sys

    from conftest import ROOT
    from procs import prefect_env

    args, message = _bad_input(kind, tmp_path, tiny_model, tiny_data)
    home, runs = tmp_path / "prefect-home", tmp_path / "runs"
    env = prefect_env(home)
    argv = [sys.executable, str(ROOT / "flows" / "int8.py"), "--run-root", str(runs)]
    for k, v in args.items():
        argv += [k, v]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)  # a hang only
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, r.stderr[-2000:]
    assert not list(home.rglob("*.db")), "a Prefect server started before the input was checked"
    assert not runs.exists() or not any(runs.iterdir())


def test_an_unforeseen_failure_while_checking_is_still_a_one_line_refusal(tmp_path, monkeypatch, capsys,
                                                                         tiny_model, tiny_data):
    """A check that breaks in a way nobody foresaw: exit 2, one line naming the exception, no run folder."""
    import flows.int8 as cli

    def broken(cfg):
        raise KeyError("width")

    monkeypatch.setattr(cli, "check_inputs", broken)
    runs = tmp_path / "runs"
    argv = ["--model", str(tiny_model), "--images", str(tiny_data["images"]), "--annotations",
            str(tiny_data["annotations"]), "--calib-images", str(tiny_data["calib_images"]), "--run-root", str(runs)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: could not check the inputs: KeyError: 'width'", err
    assert not runs.exists()


def _field_value(cfg, path):
    v = cfg
    for part in path.split("."):
        v = getattr(v, part)
    return v


def _candidates(path, info):
    """Command-line texts for a value other than the default, most natural first."""
    from typing import Literal, get_args, get_origin

    from tasks.options import unwrap_optional

    tp, _ = unwrap_optional(info.annotation)
    default = info.default_factory() if info.default_factory else info.default
    texts = {"calib_eps": ["cpu"], "providers": ["cpu"], "exclude_nodes": ["/model.0/conv"],
             "exclude_op_types": ["Add"], "class_map": ["1,2,3"], "subset": ["10"], "run_id": ["r1"],
             "guard_min_mac_share": ["tensorrt=0.9,ort-cpu=0.8"], "dask_address": ["tcp://127.0.0.1:8786"],
             "imgsz": ["640"], "crop": ["320"]}
    name = path.rsplit(".", 1)[-1]
    if name in texts:
        return texts[name]
    if get_origin(tp) is Literal:
        return [str(c) for c in get_args(tp) if c != default]
    if get_origin(tp) is list:
        (item,) = get_args(tp)
        return [str(c) for c in get_args(item)]
    if tp is int:
        return [str((default or 0) + 1), "2", "1"]
    if tp is float:
        return [str(x) for x in (0.5, (default or 1) / 2, ((default or 0) + 100) / 2, 95.0)]
    return ["some/path.onnx"]


# Settings valid only with another one: (extra arguments, the fields those set).
COMPANIONS = {"dask_address": (["--runner", "dask"], {"runner"}),
              "guard_images": (["--set", "guard_annotations=a.json"], {"guard_annotations"}),
              "guard_annotations": (["--set", "guard_images=imgs"], {"guard_images"})}


def test_every_runconfig_field_is_reachable_from_the_command_line():
    """Each setting of RunConfig (sections flattened) is reached, with help: an option of its own for
    the settings --help shows, `--set KEY=VALUE` for the rest; and a value given on the command line
    lands on that field and nowhere else."""
    from tasks.config import RunConfig
    from tasks.options import PRIMARY, flag_of, leaf_fields

    primary = {p for paths in PRIMARY.values() for p in paths}

    fields = leaf_fields(RunConfig)
    assert len(fields) > 40
    flags = [flag_of(p) for p, _ in fields]
    assert len(set(flags)) == len(flags)
    default = RunConfig()
    for path, info in fields:
        assert info.description, f"{path} has no description (its --help would be empty)"
        flag = flag_of(path)
        extra = COMPANIONS.get(path, ([], set()))[0]
        if info.annotation is bool:
            argv = ([f"--no-{flag[2:]}" if info.default else flag] if path in primary else
                    ["--set", f"{path}={'off' if info.default else 'on'}"])
            tried = [(argv, not info.default)]
        elif path in primary:
            tried = [([flag, t, *extra], None) for t in _candidates(path, info)]
        else:
            tried = [(["--set", f"{path}={t}", *extra], None) for t in _candidates(path, info)]
        for argv, expect in tried:
            try:
                cfg = build_config(None, parse_args(argv)[1])
            except ConfigError:
                continue
            got = _field_value(cfg, path)
            if got != _field_value(default, path):
                break
        else:
            raise AssertionError(f"{path}: no command-line value changed it ({[a for a, _ in tried]})")
        if expect is not None:
            assert got is expect, path
        # Nothing else moved: the value landed in the field's own section.
        changed = {p for p, _ in fields if _field_value(cfg, p) != _field_value(default, p)}
        assert changed == {path} | COMPANIONS.get(path, ([], set()))[1], (path, changed)


def _console_script():
    """The `yolo-lowbit` command pip installed beside this interpreter (pyproject's [project.scripts])."""
    import shutil
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "yolo-lowbit"
    found = str(exe) if exe.exists() else shutil.which("yolo-lowbit")
    assert found, "the yolo-lowbit command is not installed: pip install -e . (make install) installs it"
    return found


def test_the_console_command_lists_its_commands_and_refuses_an_unknown_one():
    import subprocess

    exe = _console_script()
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "int8" in r.stdout and "evaluate" in r.stdout
    r = subprocess.run([exe, "quantize"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown command 'quantize'; choose from int8, evaluate" in r.stderr
    r = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "commands:" in r.stderr


def test_each_command_takes_its_flows_options_under_its_own_name(capsys):
    from flows.cli import main as cli

    with pytest.raises(SystemExit) as e:
        cli(["int8", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: yolo-lowbit int8") and "--imgsz" in out and "--accuracy-budget" in out
    assert "yolo-lowbit int8 --demo" in out and "python flows/int8.py" not in out
    with pytest.raises(SystemExit):
        cli(["evaluate", "--help"])
    assert capsys.readouterr().out.startswith("usage: yolo-lowbit evaluate")


def test_the_console_command_refuses_bad_input_like_the_flow_script(tmp_path):
    import subprocess

    r = subprocess.run([_console_script(), "int8", "--model", str(tmp_path / "missing.onnx")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "missing.onnx does not exist" in r.stderr
