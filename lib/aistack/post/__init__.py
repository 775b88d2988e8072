"""Post-training: chat templates and SFT data, distillation losses, the teacher top-k
logits store (zarr), and generation for sequence-level distillation."""
