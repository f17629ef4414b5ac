"""summary.json and report.md: FP32 vs INT8 side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.rundir import atomic_write_json, atomic_write_text


def _side(m: dict[str, Any]) -> dict[str, Any]:
    lat = m["latency_ms"]
    return {"map50_95": m["map50_95"], "map50": m["map50"],
            "latency_ms": {"p50": lat["p50"], "p90": lat["p90"], "mean": lat["mean"]},
            "provider": m["provider"], "images": m["images"], "detections": m["detections"],
            "stats": m["stats"]}


def build_summary(ctx, calib: dict[str, Any], quant: dict[str, Any], smoke: dict[str, Any],
                  fp32: dict[str, Any], int8: dict[str, Any], corrupt: list[str]) -> dict[str, Any]:
    cfg = ctx.cfg
    cfgq = quant["config"]
    qs = quant.get("settings") or cfg.quant.model_dump()
    p50_fp32, p50_int8 = fp32["latency_ms"]["p50"], int8["latency_ms"]["p50"]
    summary = {
        "run_id": cfg.run_id,
        "run_dir": str(ctx.run_dir),
        "model": {"path": ctx.model["path"], "sha256": ctx.model["sha256"],
                  "output_format": ctx.model["output_format"], "input_shape": ctx.model["input_shape"],
                  "size_bytes": Path(ctx.model["path"]).stat().st_size},
        "calibration": {"source": calib["source"], "count": calib["count"], "sha256": calib["sha256"],
                        "seed": calib.get("seed"), "path": calib.get("folder") or calib.get("path")},
        "quantization": {
            "tool": "modelopt.onnx.quantization.quantize", "quantize_mode": "int8", "target": "tensorrt",
            "method": qs["method"],
            "calibration_ep_used": cfgq["calibration_eps"]["calibration_ep_used"],
            "calibration_eps_requested": cfgq["calibration_eps"]["calibration_eps_requested"],
            "calibration_ep_reasons": cfgq["calibration_eps"]["calibration_eps_reasons"],
            "high_precision_dtype": qs["high_precision_dtype"],
            "excluded_nodes": list(qs["exclude_nodes"]),
            "excluded_op_types": cfgq["op_types_excluded"],
            "topk_kept_float": cfgq["topk_kept_float"],
            "head_preset_nodes": cfgq.get("head_preset_nodes", []),
            "qdq_nodes": quant["qdq"]["qdq_nodes"],
            "quantized_share": quant["qdq"]["quantized_share"],
            "quantized_conv_share": quant["qdq"].get("conv_quantized_share"),
            "left_in_float": quant["qdq"]["left_in_float"],
            "onnx": quant["onnx"], "sha256": quant["sha256"], "size_bytes": Path(quant["onnx"]).stat().st_size,
            "wall_s": cfgq["wall_s"], "peak_rss_mib": cfgq["peak_rss_mib"],
        },
        "smoke": {k: smoke.get(k) for k in ("samples", "agreement", "matched", "fp32_detections", "int8_detections",
                                            "max_score_diff", "int8_distinct_scores_min")},
        "fp32": _side(fp32),
        "int8": _side(int8),
        "delta": {"map50_95": round(int8["map50_95"] - fp32["map50_95"], 6),
                  "map50": round(int8["map50"] - fp32["map50"], 6),
                  "latency_ratio": round(p50_int8 / p50_fp32, 4) if p50_fp32 else None},
        "cached": {"calibration": bool(calib.get("cached")), "quantize": bool(quant["cached"]),
                   "fp32_eval": bool(fp32.get("cached")), "int8_eval": bool(int8.get("cached"))},
        "cache_corrupt_entries": corrupt,
        "timings_s": {name: r.get("step_wall_s") for name, r in
                      (("calibration", calib), ("quantize", quant), ("smoke", smoke), ("fp32_eval", fp32),
                       ("int8_eval", int8))},
        "runtime": {"ort_version": fp32["runtime"]["ort_version"], "threads": fp32["runtime"]["threads"],
                    "device": fp32["runtime"]["device"], "fp32_providers": fp32["runtime"]["providers"],
                    "int8_providers": int8["runtime"]["providers"]},
        "versions": ctx.versions,
    }
    return summary


def regression_gate(s: dict[str, Any], budget_points: float | None) -> dict[str, Any]:
    """Pass/fail of the INT8 result against a drop budget in mAP50-95 points (0.01 each)."""
    drop_points = round(-s["delta"]["map50_95"] * 100, 3) or 0.0  # no "-0.00"
    reasons = []
    if s["int8"]["detections"] == 0:
        reasons.append(f"the INT8 model returned no detections on {s['int8']['images']} images")
    if budget_points is not None and drop_points > budget_points:
        reasons.append(f"INT8 mAP50-95 {s['int8']['map50_95']:.4f} is {drop_points:.2f} points below FP32 "
                       f"{s['fp32']['map50_95']:.4f}, over the budget of {budget_points:g} points")
    return {"budget_points": budget_points, "drop_points": drop_points, "passed": not reasons,
            "message": "; ".join(reasons) if reasons else
            f"INT8 within budget: drop {drop_points:.2f} points (budget {budget_points if budget_points is not None else 'off'})"}


def render_markdown(s: dict[str, Any]) -> str:
    f, i, d, q = s["fp32"], s["int8"], s["delta"], s["quantization"]
    mib = 2 ** 20
    rows = [
        ("mAP50-95", f"{f['map50_95']:.4f}", f"{i['map50_95']:.4f}", f"{d['map50_95'] * 100:+.2f} pt"),
        ("mAP50", f"{f['map50']:.4f}", f"{i['map50']:.4f}", f"{d['map50'] * 100:+.2f} pt"),
        ("latency p50 (ms)", f"{f['latency_ms']['p50']:.2f}", f"{i['latency_ms']['p50']:.2f}",
         f"x{d['latency_ratio']:.2f}" if d["latency_ratio"] else "n/a"),
        ("latency p90 (ms)", f"{f['latency_ms']['p90']:.2f}", f"{i['latency_ms']['p90']:.2f}", ""),
        ("model size (MiB)", f"{s['model']['size_bytes'] / mib:.2f}", f"{q['size_bytes'] / mib:.2f}", ""),
        ("provider", f["provider"], i["provider"], ""),
        ("images / detections", f"{f['images']} / {f['detections']}", f"{i['images']} / {i['detections']}", ""),
    ]
    lines = [f"# INT8 report: {Path(s['model']['path']).name} (run {s['run_id']})", "",
             "| | FP32 | INT8 | delta |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in rows]
    cached = [k for k, v in s["cached"].items() if v]
    lines += [
        "",
        "## Quantization",
        f"- ModelOpt ONNX PTQ, int8, calibration **{q['method']}** on {s['calibration']['count']} samples "
        f"({s['calibration']['source']}), calibration EP used: `{q['calibration_ep_used']}`",
        f"- high-precision dtype: {q['high_precision_dtype']}; Q/DQ nodes: {q['qdq_nodes']}; "
        f"quantizable nodes quantized: {q['quantized_share'] * 100:.1f}%",
        f"- excluded op types: {', '.join(q['excluded_op_types']) or 'none'}"
        + (" (TopK kept in float by default: quantizing its inputs coarsens the output scores to a few levels)"
           if q["topk_kept_float"] else ""),
        f"- excluded nodes: {', '.join(q['excluded_nodes']) or 'none'}",
        f"- head preset: {len(q['head_preset_nodes'])} final head convolutions kept in float"
        + (f" ({', '.join(q['head_preset_nodes'])})" if q["head_preset_nodes"] else " (preset off or no head found)"),
    ]
    for r in q["calibration_ep_reasons"]:
        lines.append(f"- {r}")
    sm = s["smoke"]
    lines += ["", "## Smoke check (FP32 vs INT8 on calibration samples)",
              f"- {sm['matched']} of {sm['fp32_detections']} FP32 detections above the smoke threshold matched by INT8 "
              f"(agreement {sm['agreement']}); largest score difference {sm['max_score_diff']}",
              "", "## Run",
              f"- run folder: `{s['run_dir']}`",
              f"- from cache: {', '.join(cached) if cached else 'nothing'}",
              f"- wall time per step (s): " + ", ".join(f"{k} {v:.1f}" for k, v in s["timings_s"].items()),
              f"- device: {s['runtime']['device']}; ORT {s['runtime']['ort_version']}, {s['runtime']['threads']} threads",
              "- latency is per image on the provider above, inference only (preprocessing and decoding apart)"]
    if s.get("accuracy_guard"):
        g = s["accuracy_guard"]
        lines += ["", f"## Accuracy guard (budget {g['budget']:g} mAP50-95 points)", f"- {g['reason']}",
                  f"- chosen: **{g['chosen']['name']}**, {g['quantized_conv_share'] * 100:.1f}% of convolutions quantized",
                  "", "| candidate | method | blocks in float | mAP50-95 | drop (pt) | p50 ms | convs quantized |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for c in g["candidates"]:
            lines.append(f"| {c['name']} | {c['method']} | {', '.join(c['excluded_blocks']) or '-'} | "
                         f"{c['map50_95']:.4f} | {c['drop_points']:.2f} | {c['latency_p50_ms']:.2f} | "
                         f"{(c['quantized_conv_share'] or 0) * 100:.1f}% |")
    if s.get("sensitivity"):
        lines += ["", "## Sensitivity (cost of quantizing each block alone; top 10)",
                  "", "| rank | block | quantizable nodes | cost | detection F1 vs FP32 |", "|---:|---|---:|---:|---:|"]
        for r in s["sensitivity"][:10]:
            lines.append(f"| {r['rank']} | `{r['block']}` | {r['nodes']} | {r['cost']:.4f} | {r.get('f1', 1.0):.3f} |")
        lines.append("\n![sensitivity](../quantize-int8/sensitivity.png)")
    gate = s.get("gate")
    if gate:
        lines.insert(2, f"**Regression gate: {'passed' if gate['passed'] else 'FAILED'}** - {gate['message']}\n")
    if s.get("cache_corrupt_entries"):
        lines.append(f"- damaged cache entries recomputed: {len(s['cache_corrupt_entries'])}")
    return "\n".join(lines) + "\n"


def table_rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"model": name, "map50_95": s[name]["map50_95"], "map50": s[name]["map50"],
             "latency_p50_ms": s[name]["latency_ms"]["p50"], "latency_p90_ms": s[name]["latency_ms"]["p90"],
             "provider": s[name]["provider"], "images": s[name]["images"]} for name in ("fp32", "int8")]


def write_report(run_dir: Path, summary: dict[str, Any]) -> str:
    md = render_markdown(summary)
    atomic_write_json(Path(run_dir) / "results" / "summary.json", summary)
    atomic_write_text(Path(run_dir) / "results" / "report.md", md)
    return md


def console_table(s: dict[str, Any]) -> str:
    head = f"{'':10}{'mAP50-95':>10}{'mAP50':>9}{'p50 ms':>9}{'p90 ms':>9}  provider"
    out = [head]
    for name in ("fp32", "int8"):
        m = s[name]
        out.append(f"{name:10}{m['map50_95']:>10.4f}{m['map50']:>9.4f}{m['latency_ms']['p50']:>9.2f}"
                   f"{m['latency_ms']['p90']:>9.2f}  {m['provider']}")
    d = s["delta"]
    out.append(f"{'delta':10}{d['map50_95']:>+10.4f}{d['map50']:>+9.4f}{'x' + format(d['latency_ratio'], '.2f'):>9}")
    return "\n".join(out)
