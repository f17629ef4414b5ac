"""Auto mode (the accuracy guard) and the sensitivity ranking it chooses from: per target, the
layers ranked by their local quantization noise on calibration samples, and the search that fits
INT8 into an mAP budget keeping as much of the convolution work in INT8 as it can."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import onnx

from tasks.evaluation.bootstrap import paired_interval
from tasks.quantization.layers import convs_of, layer_macs
from tasks.quantization.recovery import ranking
from tasks.quantization.sensitivity import block_summary, plot_sensitivity
from tasks.context import RunContext
from tasks.run.rundir import atomic_write_json
from tasks.steps.evaluate import step_evaluate
from tasks.steps.quantize import finish, raw_quantize, reconstruct_weights
from tasks.targets.base import evaluated_model, publish_quantized
from tasks.targets.recover import step_layer_stats
from tasks.targets import table


def sensitivity_rows(ctx: RunContext, calib: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """The per-layer ranking (most sensitive first) and its summary by module."""
    stats = step_layer_stats(ctx, calib, raw)
    fp = onnx.load(str(ctx.cfg.model))
    rows = ranking(stats, layer_macs(fp), convs_of(fp))
    return {"metric": "local noise-to-signal ratio of each layer's output (FP32 inputs, its own Q/DQ), on "
                      f"{min(ctx.cfg.recovery.stats_samples, calib['count'])} calibration samples",
            "layers": rows, "blocks": block_summary(rows)}


def step_sensitivity(ctx: RunContext, calib: dict[str, Any], raw: dict[str, Any],
                     quant: dict[str, Any]) -> dict[str, Any]:
    """Layers ranked by quantization sensitivity; JSON and PNG in the target's quantize folder."""
    sens = sensitivity_rows(ctx, calib, raw)
    qdir = ctx.run_dir / table.target(quant["target"]).qdir
    atomic_write_json(qdir / "sensitivity.json", sens)
    plot_sensitivity(sens["blocks"], qdir / "sensitivity.png")
    return sens


def _candidate_row(name: str, method: str, layers: list[str], quant: dict[str, Any],
                   metrics: dict[str, Any], fp32: dict[str, Any]) -> dict[str, Any]:
    """A candidate as scored on the selection images, against FP32 on the same images."""
    return {"name": name, "method": method, "float_layers": layers,
            "map50_95": metrics["map50_95"], "map50": metrics["map50"],
            "drop_points": round((fp32["map50_95"] - metrics["map50_95"]) * 100, 3),
            "delta_map50_95_ci": paired_interval(fp32.get("bootstrap"), metrics.get("bootstrap"), "map50_95"),
            "latency_p50_ms": metrics["latency_ms"]["p50"],
            "int8_conv_mac_share": quant["qdq"].get("int8_conv_mac_share"),
            "quantized_conv_share": quant["qdq"].get("conv_quantized_share"),
            "qdq_sha256": quant["sha256"], "cached": bool(quant["cached"] and metrics.get("cached"))}


def _plain_call(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def step_accuracy_guard(ctx: RunContext, calib: dict[str, Any], raw: dict[str, Any], quant: dict[str, Any],
                        fp32: dict[str, Any], int8: dict[str, Any], call: Callable[..., Any] = _plain_call,
                        evaluate: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Auto mode for one target: fit INT8 into the mAP budget keeping as much as possible in INT8.

    1. the plain result (recovery included) if it fits;
    2. tensorrt: the other calibration method (ModelOpt max / entropy), the better one kept;
    3. per-layer: the most sensitive layers (local NSR on calibration data) put back in float, the
       count found by bisection over the ranking on the evaluated subset, never below
       `guard_min_mac_share` of convolution MACs in INT8.
    Every candidate is cached; the chosen model is published into the run folder.

    `call(name, fn, *args)` runs each candidate's steps and `evaluate(which, path, sha)` evaluates it:
    plain calls here by default; with a pool of workers the pipeline runs this function in the flow's
    process and passes its own, so each candidate's steps go to the workers and its evaluation is
    sharded over them (the candidates themselves stay in order: each probe of the bisection needs the
    answer of the last)."""
    t0 = time.perf_counter()
    cfg, target = ctx.cfg, raw["target"]
    tgt = table.target(target)
    qdir, which = tgt.qdir, tgt.which
    sfx = which.removeprefix("int8")
    if evaluate is None:
        def evaluate(w: str, path: Path, sha: str, publish: bool = False, on: str = "selection") -> dict[str, Any]:
            return step_evaluate(ctx, w, path, sha, publish, tgt.runtime, on)
    budget = cfg.accuracy_budget
    # Every choice is made on the selection images (tasks/steps/guard_data.py), FP32 scored there too;
    # the chosen model is then evaluated on the reported images, which no choice has seen.
    fp32_sel = call(f"accuracy-guard{sfx}-fp32-selection", step_evaluate, ctx, "fp32", Path(cfg.model),
                    ctx.model["sha256"], False, None, "selection")
    fits = (lambda m: (fp32_sel["map50_95"] - m["map50_95"]) * 100 <= budget + 1e-9)  # noqa: E731
    method = tgt.method(raw)
    e0 = evaluate(which, *evaluated_model(quant))
    results: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]] = {
        "base": (raw, quant, e0, [])}
    cands = {"base": _candidate_row(f"plain-{method}", method, [], quant, e0, fp32_sel)}
    best = "base"
    mode = cfg.reconstruction.mode if tgt.reconstruct is not None else "off"

    def relearned(q: dict[str, Any], name: str) -> dict[str, Any]:
        # reconstruction "on": every candidate is reconstructed, as the plain model was
        return call(f"accuracy-guard{sfx}-{name}-reconstruct", reconstruct_weights, ctx, calib, q, False) \
            if mode == "on" else q

    for i, other in enumerate(tgt.alternatives(cfg) if not fits(e0) else []):
        r2 = call(f"accuracy-guard{sfx}-{other.method}-quantize", raw_quantize, ctx, calib, target, other)
        q2 = call(f"accuracy-guard{sfx}-{other.method}-recover", finish, ctx, calib, r2, None, False)
        q2 = relearned(q2, other.method)
        e2 = evaluate(which, *evaluated_model(q2))
        results[f"other{i}"] = (r2, q2, e2, [])
        cands[f"other{i}"] = _candidate_row(f"plain-{other.method}", other.method, [], q2, e2, fp32_sel)
    best = max(results, key=lambda k: results[k][2]["map50_95"])
    if mode == "auto" and not fits(results[best][2]):
        # reconstruction "auto": learned weights are tried before any layer is kept in float
        r3, q3 = results[best][0], call(f"accuracy-guard{sfx}-reconstruct", reconstruct_weights, ctx, calib,
                                        results[best][1], False)
        e3 = evaluate(which, *evaluated_model(q3))
        results["reconstruct"] = (r3, q3, e3, [])
        m3 = f"{cands[best]['method']}-reconstruct"
        cands["reconstruct"] = _candidate_row(f"plain-{m3}", m3, [], q3, e3, fp32_sel)
        if fits(e3):
            best = "reconstruct"
    # layers are ranked on a Q/DQ ONNX model: the target's own, or (openvino) ModelOpt's of the same model
    ranked_on = results[best][0] if tgt.ranking_from is None else \
        call(f"accuracy-guard{sfx}-ranking-quantize", raw_quantize, ctx, calib, tgt.ranking_from)
    sens = call(f"accuracy-guard{sfx}-ranking", sensitivity_rows, ctx, calib, ranked_on)
    chosen = best if fits(results[best][2]) else None
    if chosen is None:
        braw, bq = results[best][0], results[best][1]
        already = set(bq["config"]["recovery"]["float_layers"])
        share = bq["qdq"].get("int8_conv_mac_share", 1.0)
        ranked, spent = [], 0.0
        for r in sens["layers"]:
            if r["layer"] in already or len(ranked) >= cfg.guard_max_exclusions:
                continue
            if share - spent - r["mac_share"] < cfg.min_mac_share(target) - 1e-9:
                continue  # this one would take too much out of INT8: try the next
            ranked.append(r["layer"])
            spent += r["mac_share"]
        m_name = cands[best]["method"]

        def probe(k: int) -> bool:
            key = f"layers{k}"
            if key not in results:
                layers = ranked[:k]
                qk = call(f"accuracy-guard{sfx}-float-{k}-recover", finish, ctx, calib, braw, layers, False)
                qk = relearned(qk, f"float-{k}")
                ek = evaluate(which, *evaluated_model(qk))
                results[key] = (braw, qk, ek, layers)
                cands[key] = _candidate_row(f"{m_name}-float-{k}", m_name, layers, qk, ek, fp32_sel)
            return fits(results[key][2])

        lo, hi = 1, len(ranked)  # bisection for the fewest layers that fit (the smallest k, if any)
        found = None
        while lo <= hi:
            mid = (lo + hi) // 2
            if probe(mid):
                found, hi = mid, mid - 1
            else:
                lo = mid + 1
        chosen = f"layers{found}" if found else None
    met = chosen is not None
    if chosen is None:  # nothing fits: keep the most accurate candidate, and say so
        chosen = max(results, key=lambda k: results[k][2]["map50_95"])
    _, cq, _, layers = results[chosen]
    row = cands[chosen]
    cq = publish_quantized(ctx, cq, tgt)
    # the chosen model on the reported images (the plain model's evaluation when it was chosen)
    ce = int8 if chosen == "base" else evaluate(which, *evaluated_model(cq), True, "report")
    reason = (f"fits the budget of {budget:g} points" if met else
              f"no candidate fits the budget of {budget:g} points: tried {len(cands)} candidates, at most "
              f"{cfg.guard_max_exclusions} layers in float and at least {cfg.min_mac_share(target):.0%} of convolution "
              f"MACs in INT8; kept the most accurate ({row['name']}, drop {row['drop_points']:.2f} points)")
    guard = {"budget": budget, "met": met, "reason": reason, "target": target,
             "chosen_on": f"{(ctx.guard or {}).get('description', 'the evaluated images')} (method, layer count), "
                          f"calibration samples (recovery, ranking)",
             "selection": {k: (ctx.guard or {}).get(k) for k in ("how", "count", "data")},
             "fp32_selection_map50_95": fp32_sel["map50_95"],
             "expected": {"map50_95": -row["drop_points"] / 100, "map50_95_ci": row["delta_map50_95_ci"]},
             "candidates": list(cands.values()), "chosen": row, "float_layers": layers,
             "int8_conv_mac_share": cq["qdq"].get("int8_conv_mac_share"),
             "quantized_conv_share": cq["qdq"].get("conv_quantized_share"), "wall_s": round(time.perf_counter() - t0, 3)}
    atomic_write_json(ctx.run_dir / qdir / "accuracy-guard.json", guard)
    atomic_write_json(ctx.run_dir / qdir / "sensitivity.json", sens)
    plot_sensitivity(sens["blocks"], ctx.run_dir / qdir / "sensitivity.png")
    return {"quant": cq, "int8": ce, "guard": guard, "sensitivity": sens}
