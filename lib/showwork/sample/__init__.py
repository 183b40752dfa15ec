"""Running a model: shared forward pieces, the KV-cache sampler and its decoder, chunked log-probs, tunix rollout."""
