"""Sensitivity by module: the per-layer ranking (tasks/quantization/recovery.py) summarised by module path
(`/model.10/`, `/model.23/cv3.2/`), the granularity at which people read a YOLO, and its plot."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

_SPLIT_ABOVE = 8  # a module with more quantized layers than this is split one level deeper


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p]


def block_of(name: str, depth: int) -> str:
    parts = _parts(name)
    if len(parts) <= 1:
        return "/" + (parts[0] if parts else name) + "/"
    return "/" + "/".join(parts[:min(depth, len(parts) - 1)]) + "/"


def block_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-layer ranking summed by module (`/model.10/`; large modules one level deeper), most
    sensitive first: `cost` is the sum of the layers' noise-to-signal ratios."""
    names = [r["layer"] for r in rows]
    top: dict[str, list[str]] = defaultdict(list)
    for n in names:
        top[block_of(n, 1)].append(n)
    where = {}
    for b, members in top.items():
        for n in members:
            where[n] = block_of(n, 2) if len(members) > _SPLIT_ABOVE else b
    agg: dict[str, dict[str, Any]] = {}
    for r in rows:
        a = agg.setdefault(where[r["layer"]], {"block": where[r["layer"]], "cost": 0.0, "layers": 0, "mac_share": 0.0,
                                               "worst_layer": r["layer"]})
        a["cost"] += r["nsr"]
        a["layers"] += 1
        a["mac_share"] += r.get("mac_share", 0.0)
    out = sorted(agg.values(), key=lambda a: (-a["cost"], a["block"]))
    for i, a in enumerate(out):
        a["cost"], a["mac_share"], a["rank"] = round(a["cost"], 6), round(a["mac_share"], 6), i + 1
    return out


def plot_sensitivity(rows: list[dict[str, Any]], path: Path, top: int = 20) -> Path:
    """A horizontal bar chart (PNG, drawn with Pillow: no plotting dependency) of the top blocks' cost."""
    rows = rows[:top]
    row_h, label_w, bar_w, pad = 22, 260, 420, 12
    img = Image.new("RGB", (label_w + bar_w + 90, pad * 3 + 20 + row_h * max(len(rows), 1)), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, pad), "INT8 sensitivity by module: sum of its layers' local noise-to-signal ratios",
           fill="black")
    top_cost = max([r["cost"] for r in rows] + [1e-9])
    for i, r in enumerate(rows):
        y = pad * 2 + 20 + i * row_h
        d.text((pad, y + 4), r["block"][:40], fill="black")
        w = int(bar_w * r["cost"] / top_cost) if top_cost > 0 else 0
        d.rectangle([label_w, y + 3, label_w + max(w, 1), y + row_h - 3], fill="#c0392b" if r["cost"] > 0 else "#bbbbbb")
        d.text((label_w + max(w, 1) + 6, y + 4), f"{r['cost']:.3f}", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)
    return path
