"""A sweep: several INT8 runs (models x targets / settings) compared in one table. Plain functions; the
`yolo-sweep` flow (flows/sweep.py) starts each child as a flow run of a deployment and waits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.config import build_config


class SweepChild(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the child's name (its run folder's suffix)")
    config: dict[str, Any] = Field(default_factory=dict, description="RunConfig settings of this child")


class SweepConfig(BaseModel):
    """Children started on a work pool; their run folders under one run root every worker can read."""

    model_config = ConfigDict(extra="forbid")

    deployment: str = Field("yolo-int8/demo-int8", description="flow/deployment each child is a run of")
    children: list[SweepChild] = Field(min_length=1, description="one INT8 run each")
    run_root: Path = Field(Path("tmp/sweeps"), description="where the children's run folders go: a path every "
                                                          "worker mounts, read back by the sweep")
    timeout_s: float = Field(3600, gt=0, description="longest wait for all children")

    @field_validator("children")
    @classmethod
    def _unique(cls, v: list[SweepChild]) -> list[SweepChild]:
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError(f"child names repeat: {names}")
        return v


def child_configs(sweep: SweepConfig, sweep_id: str) -> dict[str, dict[str, Any]]:
    """Each child's parameters, checked now (a bad child fails the sweep before any run starts): its
    settings with the sweep's run root and a run id of its own."""
    out = {}
    for c in sweep.children:
        values = {**c.config, "run_root": str(sweep.run_root), "run_id": f"{sweep_id}-{c.name}"}
        try:
            build_config(None, values)
        except ValueError as e:
            raise ValueError(f"sweep child {c.name!r}: {e}") from e
        out[c.name] = values
    return out


def child_row(name: str, values: dict[str, Any], state: str) -> dict[str, Any]:
    """One row of the comparison: the child's summary.json, read from the shared run root."""
    summary_path = Path(values["run_root"]) / values["run_id"] / "results" / "summary.json"
    row: dict[str, Any] = {"child": name, "state": state, "run_folder": str(summary_path.parent.parent)}
    if not summary_path.is_file():
        return row
    s = json.loads(summary_path.read_text())
    where = next(iter(s.get("placement", {}).values()), {})
    row.update(model=Path(s["model"]["path"]).name, fp32_map50_95=s["fp32"]["map50_95"],
               host=where.get("host"), process=where.get("pid"), parent_process=where.get("ppid"), targets={})
    targets = s.get("targets") or {s["quantization"]["target"]: s}
    for t, r in targets.items():
        ci = r["delta"].get("map50_95_ci")
        row["targets"][t] = {"map50_95": r["int8"]["map50_95"], "drop_points": round(-r["delta"]["map50_95"] * 100, 3),
                             "delta_ci_points": [round(x * 100, 3) for x in ci] if ci else None,
                             "latency_ratio": r["delta"]["latency_ratio"], "size_bytes": r["quantization"]["size_bytes"]}
    return row


def _ci(ci: list[float] | None) -> str:
    return f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""


def sweep_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| child | state | model | target | FP32 mAP50-95 | INT8 mAP50-95 | INT8 - FP32 (pt) [95% CI] | latency vs FP32 | size MiB | ran on |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        where = f"{r.get('host')} (worker pid {r.get('parent_process')})" if r.get("host") else ""
        if not r.get("targets"):
            lines.append(f"| {r['child']} | {r['state']} | | | | | | | | {where} |")
        for t, m in (r.get("targets") or {}).items():
            ratio = f"x{m['latency_ratio']:.2f}" if m["latency_ratio"] else "n/a"
            lines.append(f"| {r['child']} | {r['state']} | {r['model']} | {t} | {r['fp32_map50_95']:.4f} | "
                         f"{m['map50_95']:.4f} | {-m['drop_points']:+.2f}{_ci(m.get('delta_ci_points'))} | {ratio} | {m['size_bytes'] / 2**20:.2f} | {where} |")
    return "\n".join(lines) + "\n"

