"""The report step: summary.json and report.md, FP32 vs INT8 side by side, with the regression gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.evaluation.bootstrap import budget_reading, paired_interval
from tasks.evaluation.runtime import cpu_info, cpu_label
from tasks.run.rundir import atomic_write_json, atomic_write_text
from tasks.context import RunContext
from tasks.targets.table import TARGETS, target


def _runtime(rt: dict[str, Any]) -> dict[str, Any]:
    """How and where a model ran: runtime, version, threads, session style, CPU."""
    return {"name": rt.get("runtime", "onnxruntime"), "version": rt.get("version") or rt.get("ort_version"),
            "threads": rt.get("threads"), "session": rt.get("session"), "cpu": (rt.get("cpu") or {}).get("model_name")}


def _side(m: dict[str, Any]) -> dict[str, Any]:
    lat = m["latency_ms"]
    return {"map50_95": m["map50_95"], "map50": m["map50"],
            "latency_ms": {"p50": lat["p50"], "p90": lat["p90"], "mean": lat["mean"]},
            "provider": m["provider"], "images": m["images"], "detections": m["detections"],
            "stats": m["stats"], "runtime": _runtime(m["runtime"]),
            **{k: m[k] for k in ("latency_measured", "latency_deployed_ms", "latency_deployed_session") if k in m}}


def _recovery(quant: dict[str, Any]) -> dict[str, Any]:
    """What recovery did (tasks/quantization/recovery.py) and how much of the convolution work runs in INT8."""
    rec = quant["config"].get("recovery") or {}
    q = quant["qdq"]
    return {"int8_conv_mac_share": q.get("int8_conv_mac_share"), "int8_convs": q.get("int8_convs"),
            "float_convs": q.get("float_convs", []),
            "recovery": {"bias_correction": rec.get("bias_correction"), "float_layers": rec.get("float_layers", []),
                         "float_head": rec.get("float_head", []), "head_rule": rec.get("head_rule"),
                         "half_float_layers_fixed": len(rec.get("half_float_layers_fixed", []))}}


def _smoke(smoke: dict[str, Any]) -> dict[str, Any]:
    return {k: smoke.get(k) for k in ("samples", "agreement", "matched", "fp32_detections", "int8_detections",
                                      "max_score_diff", "int8_distinct_scores_min")}


def _delta(fp32: dict[str, Any], int8: dict[str, Any]) -> dict[str, Any]:
    """INT8 minus FP32 on the same images, with the paired bootstrap's 95% intervals when both
    evaluations were resampled alike (None otherwise: never an interval of mismatched resamples)."""
    p50_fp32, p50_int8 = fp32["latency_ms"]["p50"], int8["latency_ms"]["p50"]
    b0, b1 = fp32.get("bootstrap"), int8.get("bootstrap")
    ci = {"map50_95_ci": paired_interval(b0, b1, "map50_95"), "map50_ci": paired_interval(b0, b1, "map50")}
    return {"map50_95": round(int8["map50_95"] - fp32["map50_95"], 6),
            "map50": round(int8["map50"] - fp32["map50"], 6),
            **ci,
            "bootstrap": {"resamples": b1["resamples"], "seed": b1["seed"], "level": 0.95, "images": int8["images"]}
            if ci["map50_95_ci"] is not None else None,
            "latency_ratio": round(p50_int8 / p50_fp32, 4) if p50_fp32 else None}


def _pt(x: float) -> str:
    return f"{x * 100:+.2f}"


def ci_text(delta: dict[str, Any], stat: str = "map50_95") -> str:
    """'+0.20 pt [-0.31, +0.68]': a delta in points with its 95% interval when there is one."""
    ci = delta.get(f"{stat}_ci")
    return f"{_pt(delta[stat])} pt" + (f" [{_pt(ci[0])}, {_pt(ci[1])}]" if ci else "")


def build_summary(ctx: RunContext, calib: dict[str, Any], targets: dict[str, dict[str, Any]], fp32: dict[str, Any],
                  corrupt: list[str]) -> dict[str, Any]:
    """The run's record. The first target fills `quantization`, `int8`, `delta` and `smoke` (the
    INT8 flow's shape, whichever target that is); with several, `targets` holds each one's."""
    cfg = ctx.cfg
    per: dict[str, dict[str, Any]] = {}
    for name, r in targets.items():
        q = target(name).describe(cfg, r["quant"])
        q.update(_recovery(r["quant"]))
        per[name] = {"quantization": q, **{k: r[k] for k in ("accuracy_guard", "sensitivity") if k in r}, "smoke": _smoke(r["smoke"]), "int8": _side(r["int8"]),
                     "delta": _delta(fp32, r["int8"]),
                     "cached": {"quantize": bool(r["quant"]["cached"]), "int8_eval": bool(r["int8"].get("cached"))},
                     "timings_s": {"quantize": r["quant"].get("quantize_wall_s"),
                                   "recover": r["quant"].get("step_wall_s"), "smoke": r["smoke"].get("step_wall_s"),
                                   "int8_eval": r["int8"].get("step_wall_s"),
                                   **({"reconstruct": r["quant"]["reconstruct_wall_s"]}
                                      if "reconstruct_wall_s" in r["quant"] else {}),
                                   **({"accuracy_guard": r["accuracy_guard"]["wall_s"]} if "accuracy_guard" in r else {})},
                     "providers": r["int8"]["runtime"]["providers"]}
    for t in per.values():
        if "accuracy_guard" in t:
            t["accuracy_guard"] = _guard_outcome(t["accuracy_guard"], t["delta"])
    primary = next(iter(per))
    p = per[primary]
    summary = {
        "run_id": cfg.run_id,
        "run_dir": str(ctx.run_dir),
        "model": {"path": ctx.model["path"], "sha256": ctx.model["sha256"],
                  "output_format": ctx.model["output_format"], "input_shape": ctx.model["input_shape"],
                  "size_bytes": Path(ctx.model["path"]).stat().st_size,
                  # a dynamic-shape export: what was pinned for the run (tasks/evaluation/shapes.py)
                  **({"source": ctx.model["source"]} if "source" in ctx.model else {})},
        "calibration": {"source": calib["source"], "count": calib["count"], "sha256": calib["sha256"],
                        "seed": calib.get("seed"), "path": calib.get("folder") or calib.get("path")},
        # what was evaluated and how the model's classes were matched to it (tasks/evaluation/classes.py)
        "data": {**ctx.model.get("data", {}), "classes": ctx.model.get("classes")},
        "quantization": p["quantization"],
        "smoke": p["smoke"],
        "fp32": _side(fp32),
        "int8": p["int8"],
        "delta": p["delta"],
        "cached": {"calibration": bool(calib.get("cached")), "quantize": p["cached"]["quantize"],
                   "fp32_eval": bool(fp32.get("cached")), "int8_eval": p["cached"]["int8_eval"],
                   **{f"{k}_{n}": v for n, t in per.items() if n != primary for k, v in t["cached"].items()}},
        "cache_corrupt_entries": corrupt,
        "timings_s": {"calibration": calib.get("step_wall_s"), "fp32_eval": fp32.get("step_wall_s"),
                      **p["timings_s"],
                      **{f"{k}_{n}": v for n, t in per.items() if n != primary for k, v in t["timings_s"].items()}},
        "runtime": {"ort_version": fp32["runtime"]["ort_version"], "threads": fp32["runtime"]["threads"],
                    "device": fp32["runtime"]["device"], "fp32_providers": fp32["runtime"]["providers"],
                    "int8_providers": p["providers"],
                    # where the FP32 latency was measured (a cached evaluation may come from another machine)
                    "cpu": (fp32.get("latency_measured") or {}).get("cpu") or fp32["runtime"].get("cpu"),
                    "session": fp32["runtime"].get("session")},
        "versions": ctx.versions,
    }
    summary.update({k: p[k] for k in ("accuracy_guard", "sensitivity") if k in p})
    if len(per) > 1:
        summary["targets"] = {n: {k: v for k, v in t.items() if k not in ("cached", "timings_s")} for n, t in per.items()}
    return summary


def _guard_outcome(g: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """Auto mode's expectation (its choice's delta on the selection images, with the interval) beside
    what the reported images show: an honest guard's reported delta falls inside that interval."""
    exp_ci = (g.get("expected") or {}).get("map50_95_ci")
    rep = {"map50_95": delta["map50_95"], "map50_95_ci": delta.get("map50_95_ci")}
    inside = None if exp_ci is None else bool(exp_ci[0] - 1e-9 <= delta["map50_95"] <= exp_ci[1] + 1e-9)
    return {**g, "reported": rep, "reported_within_expected_interval": inside}


def per_target(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{target: its quantization/int8/delta/smoke}, for one target or several."""
    if s.get("targets"):
        return s["targets"]
    return {s.get("quantization", {}).get("target", "tensorrt"): {k: s.get(k) for k in ("quantization", "int8", "delta", "smoke", "accuracy_guard", "sensitivity")
                                                                         if k in s}}


def regression_gate(s: dict[str, Any], budget_points: float | None) -> dict[str, Any]:
    """Pass/fail of every INT8 target against a drop budget in mAP50-95 points (0.01 each)."""
    reasons, drops, readings = [], {}, {}
    for name, t in per_target(s).items():
        label = "INT8" if "targets" not in s else f"INT8 ({name})"
        drop = round(-t["delta"]["map50_95"] * 100, 3) or 0.0  # no "-0.00"
        drops[name] = drop
        reading = budget_reading(t["delta"]["map50_95"], t["delta"].get("map50_95_ci"), budget_points,
                                 t["int8"]["images"])
        if reading is not None:
            readings[name] = {**reading, "map50_95_ci": t["delta"]["map50_95_ci"]}
        if t["int8"]["detections"] == 0:
            reasons.append(f"the {label} model returned no detections on {t['int8']['images']} images")
        if budget_points is not None and drop > budget_points:
            reasons.append(f"{label} mAP50-95 {t['int8']['map50_95']:.4f} is {drop:.2f} points below FP32 "
                           f"{s['fp32']['map50_95']:.4f}, over the budget of {budget_points:g} points")
    drop_points = max(drops.values())
    return {"budget_points": budget_points, "drop_points": drop_points, "drop_points_by_target": drops,
            "passed": not reasons, "off": budget_points is None, "intervals": readings,
            "interval_note": _interval_note(readings, budget_points, "targets" in s),
            "message": "; ".join(reasons) if reasons else
            f"gate off: drop {drop_points:.2f} points" if budget_points is None else
            f"INT8 within budget: drop {drop_points:.2f} points (budget {budget_points:g})"}


def _interval_note(readings: dict[str, dict[str, Any]], budget: float | None, multi: bool) -> str | None:
    """The gate decides on the point estimate; this says what the images can tell about that decision."""
    if not readings:
        return None
    parts = []
    for name, r in readings.items():
        lo, hi = (x * 100 for x in r["map50_95_ci"])
        who = f"{name}: " if multi else ""
        what = {"within": f"the data show it within the budget of {budget:g} points",
                "over": f"the data show it over the budget of {budget:g} points",
                "cannot tell": f"the interval straddles -{budget:g}: this subset cannot tell whether the drop is "
                               f"within the budget" + (f"; about {r['images_needed']} images would" if r["images_needed"]
                                                       else "; the point estimate sits on the budget")}[r["reading"]]
        parts.append(f"{who}95% interval of the mAP50-95 delta [{lo:+.2f}, {hi:+.2f}] points: {what}")
    return "; ".join(parts)


def _shape_lines(model: dict[str, Any], ts: dict[str, dict[str, Any]]) -> list[str]:
    """A dynamic-shape export: the size it ran at, and which INT8 models keep its axes."""
    src = model.get("source")
    if not src:
        return []
    axes = src["dynamic_axes"]
    lines = [f"- dynamic-shape export `{src['path']}` ({', '.join(f'{k} {v}' for k, v in axes.items())}): "
             f"quantized and evaluated as its static copy at {'x'.join(map(str, src['run_at']))} "
             f"(size from {src['size_from']})"]
    for name, t in ts.items():
        d = t["quantization"].get("dynamic_axes") or {}
        lines.append(f"- {name}: " + (f"keeps the export's dynamic axes (checked: runs at "
                                      f"{' and '.join('x'.join(map(str, c)) for c in d['checked_at'])})"
                                      if d.get("kept") else f"pinned to the run's size: {d.get('reason', 'not checked')}"))
    return lines


def _data_lines(s: dict[str, Any]) -> list[str]:
    """What was evaluated, how its classes were matched, what calibrated."""
    d = s.get("data") or {}
    if not d:
        return []
    if d.get("format") == "ultralytics":
        src = (f"- evaluated: the {d['split']} split of `{d['data']}` ({d['images']} images in the split, "
               f"{d['boxes']} boxes), root `{d['root']}` ({d['root_resolved']})")
        if d.get("duplicate_labels_dropped"):
            src += f"; {d['duplicate_labels_dropped']} duplicate label lines dropped, as Ultralytics drops them"
    else:
        src = f"- evaluated: `{d.get('annotations')}` with the images of `{d.get('images')}`"
    lines = ["", "## Data", src]
    if d.get("classes"):
        lines.append(f"- classes: {d['classes']['note']}")
    c = s["calibration"]
    lines.append(f"- calibration: {c['count']} {'images of ' if c['source'] == 'images' else 'samples of '}"
                 f"{c['path']}")
    return lines


def _quant_lines(q: dict[str, Any], calib: dict[str, Any]) -> list[str]:
    return target(q["target"]).report_lines(q, calib)


def _mac_lines(name: str, q: dict[str, Any]) -> list[str]:
    if q.get("int8_conv_mac_share") is None:
        return []
    rec = q.get("recovery") or {}
    bc = rec.get("bias_correction")
    floats = [f for f in q.get("float_convs", []) if f["mac_share"] > 0]
    lines = [f"- {name}, after recovery: **{q['int8_conv_mac_share'] * 100:.1f}% of convolution MACs in INT8** "
             f"({q.get('int8_convs')} convolutions)"
             + (f"; bias correction: {bc.get('method', 'on')}" if bc else "")
             + (f"; the head's final convolutions in float: {len(rec['float_head'])}" if rec.get("float_head") else "")]
    rc = q.get("reconstruction")
    if rc:
        lines.append(f"- {name}, reconstruction: {rc['weights_changed']} of {rc['weights']} int8 weights rounded the "
                     f"other way, block by block on {rc['samples']} "
                     f"calibration samples ({rc['iters']} steps of {rc['batch']} crops of {rc['crop']} px per block, "
                     f"QDrop {rc['drop']:g}; learned rounding kept in {rc['blocks_kept']} blocks, round-to-nearest where it "
                     f"was not better) on {rc['device']}: {rc['wall_s']:.0f} s, peak RSS {rc['peak_rss_mib']:.0f} MiB")
    if floats:
        lines.append(f"- {name}: in float (share of convolution MACs): "
                     + ", ".join(f"`{f['layer']}` {f['mac_share'] * 100:.2f}%" for f in floats[:12])
                     + (f", and {len(floats) - 12} more" if len(floats) > 12 else ""))
    return lines


def _guard_lines(name: str, g: dict[str, Any]) -> list[str]:
    lines = ["", f"## Accuracy guard, {name} (budget {g['budget']:g} mAP50-95 points)", f"- {g['reason']}",
             f"- chosen: **{g['chosen']['name']}**, {(g.get('int8_conv_mac_share') or 0) * 100:.1f}% of convolution "
             f"MACs in INT8; chosen on {g.get('chosen_on', 'the evaluated subset')}"]
    if g.get("expected") and g.get("reported"):
        e, r = g["expected"], g["reported"]
        inside = g.get("reported_within_expected_interval")
        lines.append(f"- expected from the selection images: {ci_text(e)}; reported on the other images: "
                     f"{ci_text(r)}" + ("" if inside is None else
                                        " (inside the expected interval)" if inside else
                                        " (**outside** the expected interval)"))
    lines += ["", "Candidates as scored on the selection images:", "",
              "| candidate | method | layers in float | mAP50-95 | delta (pt) [95% CI] | p50 ms | conv MACs in INT8 |",
              "|---|---|---|---:|---:|---:|---:|"]
    for c in g["candidates"]:
        fl = c.get("float_layers", [])
        ci = c.get("delta_map50_95_ci")
        lines.append(f"| {c['name']} | {c['method']} | {len(fl)}{': ' + ', '.join(f'`{x}`' for x in fl[:4]) if fl else ''}"
                     f"{' ...' if len(fl) > 4 else ''} | {c['map50_95']:.4f} | {-c['drop_points']:+.2f}"
                     + (f" [{ci[0] * 100:+.2f}, {ci[1] * 100:+.2f}]" if ci else "") + f" | "
                     f"{c['latency_p50_ms']:.2f} | {(c.get('int8_conv_mac_share') or 0) * 100:.1f}% |")
    return lines


def _sensitivity_lines(name: str, sens: dict[str, Any], qdir: str) -> list[str]:
    lines = ["", f"## Sensitivity, {name} (top 10 layers; {sens['metric']})", "",
             "| rank | layer | NSR | share of conv MACs |", "|---:|---|---:|---:|"]
    for r in sens["layers"][:10]:
        lines.append(f"| {r['rank']} | `{r['layer']}` | {r['nsr']:.4f} | {r['mac_share'] * 100:.2f}% |")
    lines += ["", "By module: " + ", ".join(f"`{b['block']}` {b['cost']:.4f}" for b in sens["blocks"][:8]),
              f"\n![sensitivity {name}](../{qdir}/sensitivity.png)"]
    return lines


def _deployed(m: dict[str, Any]) -> str:
    d = m.get("latency_deployed_ms")
    return f"{d['p50']:.2f}" if d else "-"


def render_markdown(s: dict[str, Any]) -> str:
    f = s["fp32"]
    ts = per_target(s)
    multi = "targets" in s
    mib = 2 ** 20
    heads = ["FP32"] + [f"INT8 {n}" if multi else "INT8" for n in ts]
    cols = list(ts.values())

    def row(label: str, fv: str, fn, dn=None) -> str:
        cells = [fv] + [fn(t) for t in cols]
        if dn is not None:
            cells += [dn(t) for t in cols]
        return f"| {label} | " + " | ".join(cells) + " |"

    delta_heads = [f"delta {n}" if multi else "delta" for n in ts]
    empty = (lambda t: "")  # noqa: E731
    lines = [f"# INT8 report: {Path(s['model']['path']).name} (run {s['run_id']})", "",
             "| | " + " | ".join(heads + delta_heads) + " |", "|---|" + "---:|" * (len(heads) + len(delta_heads))]
    lines += [
        row("mAP50-95", f"{f['map50_95']:.4f}", lambda t: f"{t['int8']['map50_95']:.4f}",
            lambda t: ci_text(t["delta"])),
        row("mAP50", f"{f['map50']:.4f}", lambda t: f"{t['int8']['map50']:.4f}",
            lambda t: ci_text(t["delta"], "map50")),
        row("latency p50 (ms)", f"{f['latency_ms']['p50']:.2f}", lambda t: f"{t['int8']['latency_ms']['p50']:.2f}",
            lambda t: f"x{t['delta']['latency_ratio']:.2f}" if t["delta"]["latency_ratio"] else "n/a"),
        row("latency p90 (ms)", f"{f['latency_ms']['p90']:.2f}", lambda t: f"{t['int8']['latency_ms']['p90']:.2f}", empty),
        row("latency p50, deployed session (ms)", _deployed(f), lambda t: _deployed(t["int8"]),
            lambda t: f"x{t['int8']['latency_deployed_ms']['p50'] / f['latency_deployed_ms']['p50']:.2f}"
            if "latency_deployed_ms" in t["int8"] and "latency_deployed_ms" in f else ""),
        row("model size (MiB)", f"{s['model']['size_bytes'] / mib:.2f}",
            lambda t: f"{t['quantization']['size_bytes'] / mib:.2f}", empty),
        row("provider", f["provider"], lambda t: t["int8"]["provider"], empty),
        row("images / detections", f"{f['images']} / {f['detections']}",
            lambda t: f"{t['int8']['images']} / {t['int8']['detections']}", empty),
    ]
    cached = [k for k, v in s["cached"].items() if v]
    lines += _data_lines(s)
    lines += ["", "## Quantization"]
    lines += _shape_lines(s["model"], ts)
    for name, t in ts.items():
        lines += _quant_lines(t["quantization"], s["calibration"])
        lines += _mac_lines(name, t["quantization"])
    lines += ["", "## Smoke check (FP32 vs INT8 on calibration samples)"]
    for name, t in ts.items():
        sm = t["smoke"]
        lines.append(f"- {name + ': ' if multi else ''}{sm['matched']} of {sm['fp32_detections']} FP32 detections above "
                     f"the smoke threshold matched by INT8 (agreement {sm['agreement']}); largest score difference "
                     f"{sm['max_score_diff']}")
    lines += ["", "## Run",
              f"- run folder: `{s['run_dir']}`",
              f"- from cache: {', '.join(cached) if cached else 'nothing'}",
              "- wall time per step (s): " + ", ".join(f"{k} {v:.1f}" if v is not None else f"{k} -"
                                                         for k, v in s["timings_s"].items()),
              f"- device: {s['runtime']['device']}; ORT {s['runtime']['ort_version']}, {s['runtime']['threads']} threads",
              f"- CPU of the latencies: {cpu_label(s['runtime']['cpu']) if s['runtime'].get('cpu') else 'not recorded'}"
              + (f" (this run: {cpu_label()})" if s["runtime"].get("cpu") and s["runtime"]["cpu"] != cpu_info() else ""),
              f"- runner: {s.get('runner', 'sequential')}"
              + (f", {s['workers']} worker processes" if s.get("workers", 1) > 1 else ""),
              "- latency is per image on the provider above, inference only (preprocessing and decoding apart); the "
              "evaluator's session runs one image at a time with ORT's worker threads not spinning, the deployed "
              "session one image back to back with them spinning (ORT's default; OpenVINO: the same latency-hint "
              "session)"]
    measured = f.get("latency_measured")
    where = s.get("placement", {}).get("latency")
    if measured:
        lines.append(f"- latency measured in its own step ({measured['how']}) on {where['host']} (pid {where['pid']})"
                     if where else f"- latency measured in its own step ({measured['how']})")
        lines[-1] += f": {measured['images']} images x {measured['rounds']} rounds, {measured['threads']} threads"
    else:
        lines.append("- latency measured by each evaluation as it ran, one step at a time (sequential runner)")
    evals = {k: v for k, v in s["cached"].items() if "eval" in k}
    if not measured and len(set(evals.values())) > 1:
        lines.append("- some evaluations come from the cache (" + ", ".join(k for k, v in evals.items() if v) + "): their "
                     "latency was measured in an earlier run, so latency ratios compare different moments of this "
                     "machine; bench/targets.py times every variant interleaved")
    qdirs = {n: t.qdir for n, t in TARGETS.items()}
    for name, t in ts.items():
        if t.get("accuracy_guard"):
            lines += _guard_lines(name, t["accuracy_guard"])
        if t.get("sensitivity"):
            lines += _sensitivity_lines(name, t["sensitivity"], qdirs.get(name, "quantize-int8"))
    if s.get("placement"):
        lines += ["", "## Where each step ran", "", "| step | host | pid | runner |", "|---|---|---:|---|"]
        lines += [f"| {k} | {v['host']} | {v['pid']} | {v['runner']} |" for k, v in s["placement"].items()]
    gate = s.get("gate")
    if gate:
        note = f"\n\n{gate['interval_note']}" if gate.get("interval_note") else ""
        lines.insert(2, f"**Regression gate: {gate_verdict(gate)}** - {gate['message']}{note}\n")
    bs = next((t["delta"]["bootstrap"] for t in ts.values() if t["delta"].get("bootstrap")), None)
    if bs:
        lines.insert(3, f"Deltas are INT8 minus FP32 on the same {bs['images']} images; brackets: 95% paired bootstrap "
                        f"interval over images ({bs['resamples']} resamples, seed {bs['seed']}). The gate decides on "
                        f"the point estimate.\n")
    if s.get("cache_corrupt_entries"):
        lines.append(f"- damaged cache entries recomputed: {len(s['cache_corrupt_entries'])}")
    return "\n".join(lines) + "\n"


def _sides(s: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(label, metrics, delta against FP32) for FP32 (no delta) and each target; one target keeps the
    label "int8"."""
    ts = per_target(s)
    multi = "targets" in s
    return [("fp32", s["fp32"], None)] + [(f"int8-{n}" if multi else "int8", t["int8"], t["delta"])
                                          for n, t in ts.items()]


def table_rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for label, m, delta in _sides(s):
        d = delta or {}
        ci, ci50 = d.get("map50_95_ci") or [None, None], d.get("map50_ci") or [None, None]
        rows.append({"model": label, "map50_95": m["map50_95"], "map50": m["map50"],
                     "delta_map50_95": d.get("map50_95"), "delta_map50_95_ci_low": ci[0], "delta_map50_95_ci_high": ci[1],
                     "delta_map50": d.get("map50"), "delta_map50_ci_low": ci50[0], "delta_map50_ci_high": ci50[1],
                     "latency_p50_ms": m["latency_ms"]["p50"], "latency_p90_ms": m["latency_ms"]["p90"],
                     "latency_ratio": d.get("latency_ratio"), "provider": m["provider"], "images": m["images"]})
    return rows


def write_report(run_dir: Path, summary: dict[str, Any]) -> str:
    md = render_markdown(summary)
    # each INT8 evaluation's metrics.json also carries its delta against FP32 with the intervals
    for name, t in per_target(summary).items():
        path = Path(run_dir) / f"{target(name).which}-coco" / "metrics.json"
        if path.is_file():
            metrics = json.loads(path.read_text())
            metrics["delta_vs_fp32"] = {k: v for k, v in t["delta"].items() if k != "latency_ratio"}
            atomic_write_json(path, metrics)
    atomic_write_json(Path(run_dir) / "results" / "summary.json", summary)
    atomic_write_text(Path(run_dir) / "results" / "report.md", md)
    return md


def console_table(s: dict[str, Any]) -> str:
    head = (f"{'':16}{'mAP50-95':>10}{'mAP50':>9}{'p50 ms':>9}{'p90 ms':>9}{'vs FP32':>18}"
            f"{'delta pt, 95% CI':>24}  provider")
    out = [head]
    fp = s["fp32"]
    for label, m, d in _sides(s):
        ratio = d["latency_ratio"] if d else None
        rel = "" if ratio is None else f"{m['map50_95'] - fp['map50_95']:+.4f} x{ratio:.2f}"
        ci = d.get("map50_95_ci") if d else None
        ci_s = f"{_pt(d['map50_95'])} [{_pt(ci[0])}, {_pt(ci[1])}]" if ci else ""
        out.append(f"{label:16}{m['map50_95']:>10.4f}{m['map50']:>9.4f}{m['latency_ms']['p50']:>9.2f}"
                   f"{m['latency_ms']['p90']:>9.2f}  {rel:>16}{ci_s:>24}  {m['provider']}")
    if s.get("gate"):
        out.append(f"regression gate: {gate_verdict(s['gate'])} - {s['gate']['message']}")
        if s["gate"].get("interval_note"):
            out.append(f"  {s['gate']['interval_note']}")
    return "\n".join(out)


def gate_verdict(gate: dict[str, Any]) -> str:
    return "FAILED" if not gate["passed"] else "off" if gate.get("off") else "passed"


def step_report(ctx: RunContext, calib: dict[str, Any], targets: dict[str, dict[str, Any]],
                fp32: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """summary.json and report.md, with the regression gate's verdict in them.

    `targets` maps each target to its {"quant", "smoke", "int8"} results, in the run's target order."""
    summary = build_summary(ctx, calib, targets, fp32, ctx.cache.corrupt)
    summary.update(extra)
    summary["gate"] = regression_gate(summary, ctx.cfg.max_map_drop)
    write_report(ctx.run_dir, summary)
    return summary
