"""A run's target-independent steps (inputs, calibration, smoke, evaluation, the report) and the
steps that dispatch to a target (quantize, recover, auto mode); tasks/pipeline.py orders them."""
