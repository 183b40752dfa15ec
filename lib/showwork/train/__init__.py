"""Training: the optimizer step, checkpoints, the shared loop, and the SFT, GRPO and self-teaching stages."""
