"""The Slurm backend: the executor (executor.py), sbatch rendering (sbatch.py), the QOS
submit limit (limits.py), waves under it (waves.py) and states read back (sacct.py)."""
