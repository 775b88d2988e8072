"""GPT on megatron-core: model build, data, optimizer, checkpoints, the training loop."""
