"""Evaluation: preprocessing, decoding, ONNX Runtime sessions, COCO scoring, the smoke check."""
