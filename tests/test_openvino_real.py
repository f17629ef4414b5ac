"""The openvino target on ../shared's real COCO-trained YOLOv10s (skipped with its reason when absent),
evaluated on the 300-image COCO set: the 95% paired-bootstrap interval of its mAP50-95 delta against
FP32 reaches above -0.5 points (the data do not show a loss of more than half a point) and its point
estimate stays above the default gate's -1.0, nearly every
convolution runs as an INT8 primitive, and the same holds on every oneDNN kernel family this CPU has
(AMX, AVX512-VNNI, AVX2-VNNI, AVX2; ONEDNN_MAX_CPU_ISA caps OpenVINO to each in turn, in a fresh process)
-- the families on which ModelOpt's signed Q/DQ once collapsed on OpenVINO."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, shared_path
from tasks.config import RunConfig

# (family, ONEDNN_MAX_CPU_ISA cap, /proc/cpuinfo flag the family needs), best first: the best family a
# CPU has is the one OpenVINO picks without a cap (the run's own evaluation); a cap above it changes
# nothing, and a cap on a family the CPU lacks falls to the next one down, which is covered anyway.
_FAMILIES = (("AMX", "AVX512_CORE_AMX", "amx_int8"), ("AVX512-VNNI", "AVX512_CORE_VNNI", "avx512_vnni"),
             ("AVX2-VNNI", "AVX2_VNNI", "avx_vnni"), ("AVX2", "AVX2", "avx2"))
# kernel names a capped run must not show (the cap was honoured: OpenVINO's oneDNN read the variable)
_ABOVE = {"AVX512_CORE_AMX": (), "AVX512_CORE_VNNI": ("amx",), "AVX2_VNNI": ("amx", "avx512"),
          "AVX2": ("amx", "avx512")}

_EVAL_UNDER_ISA = """
import json, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from tasks.evaluation.evaluate import EvalSettings, evaluate_model
from tasks.evaluation.sources.base import DataSpec
from tasks.quantization.nncf_ptq import runtime_convolutions
settings = EvalSettings.model_validate_json({settings!r})
m = evaluate_model(Path({xml!r}), DataSpec(Path({images!r}), Path({ann!r})), None, settings, io_model=Path({model!r}))
rc = runtime_convolutions(Path({xml!r}), settings.threads)
print("RESULT " + json.dumps({{"map50_95": m["map50_95"], "images": m["images"], "bootstrap": m["bootstrap"],
                              "kernels": rc["primitives"], "int8_convs": len(rc["int8"]),
                              "float_convs": len(rc["float"])}}))
"""


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _families(flags: set[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """(the CPU's best family: the native run, [(family, cap)] to evaluate under a cap besides it)."""
    have = [(name, cap) for name, cap, flag in _FAMILIES if flag in flags]
    if not have:
        return None, []
    return have[0][0], have[1:]


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.timeout(3600)  # a whole run and up to three more evaluations of 300 images: past the 900 s default
def test_yolov10s_openvino_target_holds_on_300_images_on_every_kernel_family(tmp_path):
    from tasks.evaluation.bootstrap import paired_interval
    from tasks.pipeline import run_int8

    model = shared_path("models/yolov10s-coco/yolov10s.onnx")
    images = shared_path("data/coco-val2017-300/images")
    ann = shared_path("data/coco-val2017-300/annotations/instances_val2017.json")
    calib = shared_path("data/coco-calib-512/images")
    cfg = RunConfig.model_validate({
        # 32 calibration images, not the default 128: NNCF's statistics converge (bench/ranges.py: -0.30 and
        # -0.10 at 32 and 128 on this model) and 128 costs CI a minute more per kernel family
        "model": str(model), "calib_images": str(calib), "calib_count": 32, "images": str(images),
        "annotations": str(ann), "targets": ["openvino"], "max_map_drop": None,  # the test asserts instead
        "run_root": str(tmp_path / "runs"), "run_id": "ov",
        "eval": {"providers": ["cpu"], "warmup": 1, "deployed_runs": 0}})
    s = run_int8(cfg)
    q = s["quantization"]
    run = tmp_path / "runs" / "ov"
    xml = run / "openvino" / "yolov10s-int8-openvino.xml"
    assert q["target"] == "openvino" and q["artifact"] == str(xml) and xml.with_suffix(".bin").is_file()
    assert s["int8"]["provider"] == "OpenVINO CPU" and s["int8"]["images"] == 300
    # read from OpenVINO's compiled runtime graph on this CPU: convolutions on integer kernels
    assert q["int8_conv_mac_share"] >= 0.95 and q["int8_convs"] >= 0.95 * (q["int8_convs"] + len(q["float_convs"]))
    assert sum(n for k, n in q["runtime_primitives"].items() if k.split()[0] in ("u8", "i8")) >= q["int8_convs"]
    assert s["smoke"]["agreement"] >= 0.9
    metrics = json.loads((run / "int8-openvino-coco" / "metrics.json").read_text())
    assert metrics["runtime"]["runtime"] == "openvino" and metrics["runtime"]["cpu"]["model_name"]
    fp32 = json.loads((run / "fp32-coco" / "metrics.json").read_text())

    # Two checks, each outside the spread the CPU and the image draw produce:
    # - the 95% paired-bootstrap interval of INT8 minus FP32 over the 300 images must reach above -0.5
    #   points (the data do not show a loss of more than half a point; the interval is about 1.1
    #   points wide here, e.g. -0.30 [-0.65, +0.44] on an AMD EPYC with AVX2);
    # - the point estimate must stay above -1.0 point, the default gate: the CPU moves it by a few
    #   tenths (the kernel family rounds differently: -0.34 on an Intel AMX Xeon, -0.61 on an AMD
    #   Zen 4 on 79 images; -0.30 here on 300), so a 1-point regression fails and a CPU does not.
    # A collapse (tens of points, as ModelOpt's signed Q/DQ on non-AMX kernels) fails both.
    def holds(m: float, ci: list[float] | None) -> bool:
        return ci is not None and ci[1] * 100 >= -0.5 and (m - s["fp32"]["map50_95"]) * 100 >= -1.0

    native, capped = _families(_cpu_flags())
    ci = s["delta"]["map50_95_ci"]
    assert ci == paired_interval(fp32["bootstrap"], metrics["bootstrap"], "map50_95")
    rows = {f"{native or 'native'} (native)": (s["int8"]["map50_95"], ci)}
    lines = [f"FP32 mAP50-95 {s['fp32']['map50_95']:.4f} on {s['int8']['images']} images (ORT CPU)"]
    failed = [] if holds(s["int8"]["map50_95"], ci) else [f"{native or 'native'} (native)"]
    for name, cap in capped:
        code = _EVAL_UNDER_ISA.format(
            root=str(ROOT), xml=str(xml), images=str(images), ann=str(ann), model=str(model),
            settings=cfg.eval.model_copy(update={"runtime": "openvino", "warmup": 0,
                                                 "deployed_runs": 0}).model_dump_json())
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1500,
                             env={**os.environ, "ONEDNN_MAX_CPU_ISA": cap})
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert out.returncode == 0 and line, (name, out.stderr[-2000:])
        r = json.loads(line[len("RESULT "):])
        assert r["images"] == 300
        # the cap took effect (else this family was not tested at all), and convolutions stayed integer
        assert not [k for k in r["kernels"] if any(a in k.lower() for a in _ABOVE[cap])], (name, r["kernels"])
        assert r["int8_convs"] >= 0.95 * (r["int8_convs"] + r["float_convs"]), (name, r["kernels"])
        fam_ci = paired_interval(fp32["bootstrap"], r["bootstrap"], "map50_95")
        rows[f"{name} ({cap})"] = (r["map50_95"], fam_ci)
        if not holds(r["map50_95"], fam_ci):
            failed.append(name)
    for label, (m, c) in rows.items():
        lo, hi = (f"{x * 100:+.2f}" for x in c) if c else ("n/a", "n/a")
        lines.append(f"{label}: INT8 mAP50-95 {m:.4f}, delta {(m - s['fp32']['map50_95']) * 100:+.2f} pt, "
                     f"95% interval [{lo}, {hi}] pt")
    skipped = [name for name, _, flag in _FAMILIES if name != native and name not in dict(capped)]
    lines.append(f"native kernels: {', '.join(f'{n} {k}' for k, n in q['runtime_primitives'].items())}")
    lines.append(f"kernel families covered: {', '.join(rows)}; not on this CPU: {', '.join(skipped) or 'none'}")
    print("\n" + "\n".join(lines))
    assert not failed, "\n".join(lines)
