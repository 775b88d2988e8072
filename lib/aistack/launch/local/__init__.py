"""The local backend: the executor (executor.py) and the processes of its tasks
(processes.py: finding, stopping and checking them)."""
