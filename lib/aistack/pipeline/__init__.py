"""Pipelines: stages of recipes chained by their outputs, run as one (Slurm afterok, or in order here)."""
