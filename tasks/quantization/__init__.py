"""Quantization: calibration data, ModelOpt PTQ, the ort-cpu build, per-layer recovery."""
