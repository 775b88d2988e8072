"""aistack: recipes for the AI engineering stack, launched on Slurm through submitit."""

__version__ = "0.1.0"
