"""Evaluation with lm-evaluation-harness: the registered `aistack` model, local tasks, sweeps."""
