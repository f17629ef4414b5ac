"""One pydantic model describes a run; the CLI, YAML files and Prefect parameters all fill it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.demo_data import ensure_demo_data
from tasks.evaluation.evaluate import EvalSettings
from tasks.evaluation.sources.base import DataSpec, Split

# Calibration images taken when --calib-count is not given (all of them if the folder holds fewer).
# The default range estimators do not lose accuracy as samples are added, and YOLOv5n gained from
# 32 to 128 (bench/ranges.py); 512 cost 3.5x the calibration time of 128 for no further gain.
DEFAULT_CALIB_COUNT = 128

REPO_ROOT = Path(__file__).resolve().parents[1]
USER_DEFAULT_MODEL = Path("models/cv-models/yolov10m/checkpoints/yolov10m.onnx")
DEMO_DIR = REPO_ROOT / "demo"
DEMO_CONFIG = DEMO_DIR / "demo.yaml"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the setting and the fix."""


class QuantSettings(BaseModel):
    """Settings handed to ModelOpt ONNX PTQ; every one of them enters the quantize cache key."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["max", "entropy", "mean-max", "percentile", "mse"] = Field(
        "mse", description="activation ranges of the tensorrt target: mse (the default: the clip of least squared "
                           "quantisation error, NVIDIA's YOLO recipe; best or level across models and it does not "
                           "lose accuracy as samples are added), max (ModelOpt's, the largest magnitude over all "
                           "samples: it widens with every sample), entropy (ORT's KL search), mean-max (per-sample "
                           "maxima averaged, NNCF's statistic), percentile; all but max from ModelOpt's max pass "
                           "plus one streamed histogram pass, handed to ModelOpt as a calibration cache "
                           "(tasks/quantization/ranges.py)")
    percentile: float = Field(99.99, gt=50, le=100, description="method percentile: the share of |activation| "
                                                                 "values kept inside the range")
    calib_eps: list[str] = Field(default_factory=lambda: ["cuda:0", "cpu"],
                                 description="calibration EPs in priority order; cpu is kept last")
    exclude_nodes: list[str] = Field(default_factory=list, description="node-name regexes kept in float (every target), "
                                                                    "matched from the name's start")
    exclude_op_types: list[str] = Field(default_factory=list, description="op types kept in float (every target)")
    high_precision_dtype: Literal["fp32", "fp16"] = Field(
        "fp32", description="the tensorrt model's float parts: fp32, or fp16 for a TensorRT engine built in fp16 "
                            "(ModelOpt's own conversion, applied to the finished model; evaluated with its Q/DQ in "
                            "fp32 where ORT's fp16 QuantizeLinear does not round to nearest)")
    dq_only: bool = Field(True, description="ModelOpt's dq_only: the tensorrt artifact stores its weights as INT8 "
                                            "behind a DequantizeLinear (same outputs, a quarter of the weight "
                                            "bytes); off: FP32 weights behind Q/DQ pairs")

    def ptq_key(self) -> dict[str, Any]:
        """The settings that change ModelOpt's output (dq_only and the fp16 conversion are applied to
        the finished model, after recovery)."""
        return self.model_dump(exclude={"dq_only", "high_precision_dtype"})

    @field_validator("calib_eps")
    @classmethod
    def _cpu_last(cls, v: list[str]) -> list[str]:
        v = [e.strip().lower() for e in v if e.strip()]
        bad = [e for e in v if not (e == "cpu" or e == "trt" or e.startswith("cuda"))]
        if bad:
            raise ValueError(f"unknown calibration EP(s) {bad}; use cuda:N, trt or cpu")
        # cpu last: ModelOpt tries EPs in list order and cpu is the one that always works.
        return [e for e in v if e != "cpu"] + ["cpu"]

    def effective_op_types_to_exclude(self) -> list[str]:
        # TopK stays float: Q/DQ on its inputs coarsens YOLOv10's output scores to a few levels
        ops = list(self.exclude_op_types)
        if "TopK" not in ops:
            ops.append("TopK")
        return ops


Target = Literal["tensorrt", "ort-cpu", "openvino"]
TARGET_NAMES: tuple[str, ...] = get_args(Target)


class OpenVinoSettings(BaseModel):
    """The openvino target: NNCF post-training quantization of the OpenVINO model
    (tasks/quantization/nncf_ptq.py), shipped as an IR for OpenVINO's CPU plugin. The quant section's exclusions apply."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["mixed", "performance"] = Field(
        "mixed", description="NNCF preset: mixed = symmetric int8 weights, asymmetric uint8 activations "
                             "(Ultralytics' choice for YOLO: post-SiLU activations are one-sided); performance "
                             "= symmetric activations too")
    decode_float: bool = Field(True, description="keep the decode after the head's final convolutions (anchors, "
                                                 "strides, DFL, TopK) in float")
    sigmoid_float: bool = Field(True, description="keep every Sigmoid (SiLU's included) in float, as Ultralytics' "
                                                  "OpenVINO INT8 export does")
    overflow_fix: Literal["enable", "first_layer_only", "disable"] = Field(
        "enable", description="NNCF's overflow fix: weights of every layer (enable), of the first (first_layer_only, "
                              "NNCF's default) or none on 7 bits, so u8 x s8 pairs cannot saturate the 16-bit sums "
                              "of CPUs without VNNI. enable measured the same on every kernel family "
                              "(bench/ov_portability.py); first_layer_only lost 0.3 pt more on YOLOv5n on AVX2 kernels")


class OrtCpuSettings(BaseModel):
    """The ort-cpu target: a Q/DQ model laid out so ONNX Runtime's CPU EP fuses it into integer kernels
    (QLinearConv, QLinearSigmoid, QLinearMul ...). The quant section's exclusions apply to it too."""

    model_config = ConfigDict(extra="forbid")

    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="uint8: ORT's x86 integer convolutions are u8 x s8 (int8 activations measured "
                             "1.9x slower than FP32 on an AVX2 CPU, uint8 0.7x)")
    per_channel: bool = Field(True, description="per-output-channel weight scales (free at run time)")
    reduce_range: Literal["auto", "on", "off"] = Field(
        "auto", description="7-bit weights; auto: on for x86 CPUs without VNNI, whose u8 x s8 instruction "
                            "(vpmaddubsw) saturates with full-range weights")
    calibrate_method: Literal["mean-max", "minmax", "percentile", "entropy"] = Field(
        "mean-max", description="activation ranges of the ort-cpu target: mean-max (the default: each sample's min "
                                "and max averaged, NNCF's statistic, one streamed pass; it converges as samples are "
                                "added), minmax (ORT's, the extremes over all samples: YOLOv10s lost 1.8 points at "
                                "128 samples), percentile or entropy (ORT's histograms; ORT keeps every sample's "
                                "activations in memory until the end)")
    percentile: float = Field(99.999, gt=90, le=100, description="the percentile of calibrate_method=percentile")


class RecoverySettings(BaseModel):
    """What keeps layers in INT8 after PTQ, for every target (tasks/quantization/recovery.py); measured on the
    real models in ../shared and the demo (README, "Accuracy guard")."""

    model_config = ConfigDict(extra="forbid")

    head_float: bool = Field(True, description="keep the detection head's final convolutions (those that form boxes "
                                                "and scores) in float when together they fit under float_mac_cap")
    float_mac_cap: float = Field(0.03, ge=0, le=1, description="the plain run keeps at most this share of all "
                                                               "convolution MACs in float (the head rule)")
    stats_samples: int = Field(32, ge=1, le=1024, description="calibration samples for the per-layer statistics")


class ReconstructionSettings(BaseModel):
    """Reconstruction (tasks/quantization/reconstruct.py): the integers of each convolution's weights
    learned block by block on the calibration samples (BRECQ, AdaRound, QDrop), label-free, so that
    each block of the target's Q/DQ model reproduces the FP32 block; scales and placement unchanged."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "auto", "on"] = Field(
        "off", description="off; auto: auto mode may reconstruct before it keeps any layer in float; on: every "
                           "run reconstructs (the plain run too). Applies to tensorrt and ort-cpu")
    samples: int = Field(64, ge=1, le=4096, description="calibration samples it learns on (at most the calibration "
                                                       "set); memory does not grow with them (fp16 maps on disk)")
    iters: int = Field(1000, ge=1, le=100000, description="optimizer steps per block")
    batch: int = Field(4, ge=1, le=256, description="crops per step")
    crop: int = Field(256, ge=0, description="crop side in input pixels (a multiple of 32; 0: whole samples); "
                                             "blocks with global ops (attention) learn on whole samples")
    convs_per_block: int = Field(4, ge=1, le=64, description="convolutions reconstructed together (BRECQ's block)")
    drop: float = Field(0.5, ge=0, lt=1, description="QDrop: the probability that an activation element skips its "
                                                     "quantizer while learning; 0: every quantizer on")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device: auto takes CUDA when torch "
                                                                      "sees a GPU")

    @field_validator("crop")
    @classmethod
    def _crop32(cls, v: int) -> int:
        if v % 32:
            raise ValueError("reconstruction.crop: a multiple of 32 (every stride of the model cuts it evenly), or 0")
        return v


def _is_share(x: Any) -> bool:
    # A validator's TypeError is not turned into a ValidationError by pydantic: test the type here.
    try:
        return 0 <= float(x) <= 1
    except (TypeError, ValueError):
        return False


class RunConfig(BaseModel):
    """A whole INT8 run: inputs, calibration, PTQ, evaluation and where artifacts go."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(USER_DEFAULT_MODEL, description="FP32 ONNX export with a static 1x3xHxW input")
    demo: bool = Field(False, description="run on the bundled demo model and data")
    calib: Path | None = Field(None, description="calibration tensor .npy/.npz, N x 3 x H x W float32, preprocessed")
    calib_images: Path | None = Field(None, description="folder of calibration images (letterboxed like inference)")
    calib_count: int | None = Field(None, ge=1, le=4096, description="images sampled from calib_images (default "
                                    f"{DEFAULT_CALIB_COUNT}, or all of them if the folder holds fewer)")
    calib_seed: int = Field(0, description="seed of the calibration sample and its order")
    allow_calib_overlap: bool = Field(False, description="allow calibration images that are also evaluated")
    images: Path | None = Field(None, description="folder of the evaluated images")
    annotations: Path | None = Field(None, description="COCO instances JSON describing the images")
    data: Path | None = Field(None, description="an Ultralytics dataset YAML (path, train, val, test, names; YOLO "
                                                "labels beside the images), instead of --images/--annotations; "
                                                "calibration then defaults to its train split")
    split: Split = Field("val", description="with --data: the split evaluated")
    subset: str | None = Field(None, description="N, random:N, or a file of image ids / file names")
    subset_seed: int = Field(0, description="seed of subset=random:N")
    targets: list[Target] = Field(default_factory=lambda: ["tensorrt"],
                                  description="tensorrt: ModelOpt Q/DQ for TensorRT engines (default); ort-cpu: "
                                              "INT8 for ONNX Runtime's CPU EP; openvino: NNCF INT8 IR for "
                                              "OpenVINO's CPU plugin; several are evaluated side by side")
    quant: QuantSettings = Field(default_factory=QuantSettings)
    ort_cpu: OrtCpuSettings = Field(default_factory=OrtCpuSettings)
    openvino: OpenVinoSettings = Field(default_factory=OpenVinoSettings)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    reconstruction: ReconstructionSettings = Field(default_factory=ReconstructionSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    smoke_samples: int = Field(4, ge=1, le=64, description="calibration samples the smoke check runs through "
                                                          "FP32 and INT8")
    smoke_conf: float = Field(0.25, gt=0, lt=1, description="confidence above which the smoke check compares "
                                                            "detections")
    run_root: Path | None = Field(None, description="default tmp/<model-stem>_lowbit")
    run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                               description="run folder name (default: a timestamp)")
    cache_dir: Path | None = Field(None, description="default <run_root>/.cache")
    max_map_drop: float | None = Field(
        1.0, ge=-100, le=100, description="regression gate: fail the run when INT8 mAP50-95 is more than this many points "
                               "(0.01 each) below FP32 (a negative budget demands a gain); null disables the gate")

    accuracy_budget: float | None = Field(
        None, ge=0, le=100, description="auto mode, for every target: largest mAP50-95 drop (points) INT8 may show; "
                                         "the most sensitive layers are kept in float until it fits")
    sensitivity: bool = Field(False, description="rank layers by quantization sensitivity (on in auto mode)")
    guard_max_exclusions: int = Field(16, ge=1, le=256, description="layers auto mode may keep in float at most")
    guard_min_mac_share: dict[Target, float] = Field(
        default_factory=lambda: {"tensorrt": 0.97, "ort-cpu": 0.95, "openvino": 0.95},
        description="auto mode never lets the share of convolution MACs that run in INT8 fall below this, per "
                    "target (one number sets every target)")

    guard_images: Path | None = Field(
        None, description="auto mode chooses on annotated images it does not report: a folder of them (with "
                          "guard_annotations); default: images of --annotations outside the evaluated subset, "
                          "else a held-out split of the evaluated images (guard_split)")
    guard_annotations: Path | None = Field(None, description="COCO instances JSON of guard_images")
    guard_subset: str | None = Field(None, description="auto mode's selection images: N, random:N or a file "
                                                       "(of guard_images, or of --annotations outside the subset)")
    guard_split: float = Field(0.5, gt=0, lt=1, description="auto mode without other annotated images: the share of "
                                                           "the evaluated images it chooses on; the rest are "
                                                           "reported")
    guard_min_images: int = Field(30, ge=1, description="auto mode uses the annotation file's images outside the "
                                                        "evaluated subset when at least this many exist")

    runner: Literal["sequential", "process", "dask"] = Field(
        "sequential", description="how steps run: sequential (one after another in this process); process (a pool "
                                  "of worker processes on this machine); dask (a Dask cluster: dask_address, or a "
                                  "local one). With process and dask, independent steps run side by side: FP32 "
                                  "evaluation beside PTQ, the targets, evaluation shards")
    workers: int = Field(2, ge=1, le=256, description="process and local-dask runners: worker processes (one step "
                                                      "each at a time); evaluations split into this many shards "
                                                      "and ORT gets cores / workers threads in each")
    dask_address: str | None = Field(None, pattern=r"^(tcp|tls|ws|wss|inproc)://\S+$",
                                     description="runner dask: the scheduler of a running cluster, tcp://HOST:PORT "
                                                 "(without it a LocalCluster of `workers` processes is started)")
    latency_images: int = Field(32, ge=1, le=1000, description="process and dask runners: images of the latency "
                                                               "step, which times every model alone after all "
                                                               "other steps")

    @field_validator("guard_min_mac_share", mode="before")
    @classmethod
    def _share_per_target(cls, v: Any) -> Any:
        if isinstance(v, (int, float)):
            v = {t: v for t in TARGET_NAMES}
        if isinstance(v, dict) and any(not _is_share(x) for x in v.values()):
            raise ValueError("guard_min_mac_share: a share between 0 and 1")
        return v

    def min_mac_share(self, target: str) -> float:
        return self.guard_min_mac_share.get(target, 0.95)  # type: ignore[call-overload]

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"name at least one target: {', '.join(TARGET_NAMES)}")
        return list(dict.fromkeys(v))  # order kept: the first is the summary's primary target

    @model_validator(mode="after")
    def _one_calibration_source(self) -> "RunConfig":
        if self.calib is not None and self.calib_images is not None:
            raise ValueError("give either calib (a tensor file) or calib_images (a folder), not both")
        if self.data is not None and (self.images is not None or self.annotations is not None):
            raise ValueError("give either data (an Ultralytics dataset YAML) or images and annotations (a COCO "
                             "set), not both")
        if (self.guard_images is None) != (self.guard_annotations is None):
            raise ValueError("guard_images and guard_annotations go together: pass both, or neither")
        if self.dask_address is not None and self.runner != "dask":
            raise ValueError(f"dask_address is set but runner is {self.runner!r}; add --runner dask")
        return self

    def eval_data(self) -> DataSpec:
        """The evaluated data, as the readers take it (tasks/evaluation/sources)."""
        return DataSpec(images=self.images, annotations=self.annotations, data=self.data, split=self.split)

    def guard_data(self) -> DataSpec | None:
        """Auto mode's separate selection set, where one is named."""
        if self.guard_images is None:
            return None
        return DataSpec(images=self.guard_images, annotations=self.guard_annotations)

    def worker_threads(self) -> int | None:
        """ORT intra-op threads of one worker: the setting, else cores / workers with a pool (one
        step per worker process; unset, every worker would take every core)."""
        if self.eval.threads is not None or self.runner == "sequential":
            return self.eval.threads
        return max(1, (os.cpu_count() or 1) // self.workers)

    def resolved(self) -> "RunConfig":
        """Fill demo paths and derived defaults; raise ConfigError naming anything missing."""
        cfg = self.model_copy(deep=True)
        if cfg.demo:
            demo = load_demo_config()
            data = demo["paths"]
            given = self.model_fields_set
            if "model" not in given:
                cfg.model = demo["model"]
            if cfg.data is None:
                cfg.images = cfg.images or data["images"]
                cfg.annotations = cfg.annotations or data["annotations"]
            if cfg.calib is None and cfg.calib_images is None and cfg.data is None:
                cfg.calib_images = data["calib_images"]
            if "calib_count" not in given:
                cfg.calib_count = demo["calib_count"]
            if "run_root" not in given:
                cfg.run_root = demo["run_root"]
        if not Path(cfg.model).exists():
            hint = " (the default is the user's YOLOv10m layout; run with --demo for the bundled demo)" \
                if Path(cfg.model) == USER_DEFAULT_MODEL else ""
            raise ConfigError(f"model {cfg.model} does not exist{hint}; pass --model PATH")
        if cfg.data is None and (cfg.images is None or cfg.annotations is None):
            raise ConfigError("evaluation needs --data DATA.yaml, or --images DIR and --annotations JSON (or --demo)")
        if cfg.calib is None and cfg.calib_images is None and cfg.data is None:
            raise ConfigError("calibration needs --calib FILE.npy|.npz or --calib-images DIR (or --data DATA.yaml, "
                              "whose train split it then uses; or --demo)")
        if cfg.run_root is None:
            cfg.run_root = Path("tmp") / f"{Path(cfg.model).stem}_lowbit"
        if cfg.cache_dir is None:
            cfg.cache_dir = Path(cfg.run_root) / ".cache"
        return cfg


def load_demo_config(generate: bool = True) -> dict[str, Any]:
    """demo/demo.yaml with absolute paths; generates the demo's images on first use."""
    raw = load_yaml_config(DEMO_CONFIG)
    d = raw["data"]
    root = REPO_ROOT / d["root"]
    paths = ensure_demo_data(root, seed=d["seed"], val_count=d["val_images"], calib_count=d["calib_images"]) \
        if generate else {}
    return {"model": REPO_ROOT / raw["model"], "run_root": REPO_ROOT / raw["run_root"],
            "calib_count": int(raw["calib_count"]), "paths": paths, "data": d}


def load_yaml_config(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; pass --config with a YAML file of settings")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(file_values: dict[str, Any] | None, cli_values: dict[str, Any]) -> RunConfig:
    """File values first, command-line values over them; errors name the setting."""
    merged = deep_merge(file_values or {}, cli_values)
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as e:
        msgs = "; ".join((f"{'.'.join(map(str, err['loc']))}: " if err["loc"] else "")
                         + err["msg"].removeprefix("Value error, ") for err in e.errors())
        raise ConfigError(f"invalid settings: {msgs}") from e
