"""torch.distributed (and, later, Megatron parallel state) from the Slurm/submitit task environment."""

from aistack.model.dist.init import destroy, init_distributed

__all__ = ["init_distributed", "destroy"]
