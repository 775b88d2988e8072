"""Inference benchmark: generation speed and quality of a model in BF16 and FP8 (kind: bench)."""
