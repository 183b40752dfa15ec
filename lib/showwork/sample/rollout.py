"""showwork's sampler behind tunix's rollout interface (`BaseRollout`).

For users who run tunix's own RL stack (`RLCluster`, `GRPOLearner`) and want
this sampler in place of tunix's vanilla one: `Rollout(loaded)` is a drop-in
rollout engine. Our GRPO job does not go through it: its loop calls
`sampler.generate` directly, because two things it relies on have no
field in tunix's `RolloutConfig`: one seed per row (a row's completion does
not depend on its batch-mates, so resumed runs repeat exactly) and shared
prefill of a prompt's G completions (`group`).

Differences from tunix's `VanillaRollout`, on purpose: `RolloutOutput.logits`
is empty (the sampler does not keep 262k floats per generated token; ask
for `return_logprobs` instead, which scores the completions with the
chunked log-prob path), and prompts longer than `max_prompt_length` are
refused with an error rather than cut.
"""

from __future__ import annotations

import numpy as np
from flax import nnx
from tunix.rl.rollout import base_rollout

from showwork.model.loaded import Loaded
from showwork.model.tokenizer import EOS_ID, PAD_ID
from showwork.sample import forward, sampler
from showwork.sample.logprobs import completion_logps


class Rollout(base_rollout.BaseRollout):
    def __init__(self, loaded: Loaded, batch_size: int = 8):
        self.loaded = loaded
        self.batch_size = batch_size

    def generate(self, prompts: list[str], rollout_config: base_rollout.RolloutConfig, **kwargs) -> base_rollout.RolloutOutput:
        c = rollout_config
        settings = sampler.SampleSettings(
            max_new_tokens=c.max_tokens_to_generate, temperature=float(c.temperature),
            top_k=None if c.top_k in (None, -1) else int(c.top_k),
            top_p=None if c.top_p is None or c.top_p >= 1.0 else float(c.top_p))
        seed = 0 if c.seed is None else int(np.asarray(c.seed).reshape(-1)[0])
        prompt_len = forward.bucket(c.max_prompt_length)
        samples = sampler.generate(self.loaded, prompts, settings, seed=seed, batch_size=self.batch_size,
                                    stop_ids=tuple(c.eos_tokens) if c.eos_tokens else None, prompt_len=prompt_len)
        prompt, completion, mask = forward.pack(samples.prompt_tokens, samples.completion_ids, prompt_len=prompt_len)
        logprobs = None
        if c.return_logprobs:
            scored = np.asarray(self._logps(prompt, completion, mask))
            logprobs = [scored[i, :len(ids)] for i, ids in enumerate(samples.completion_ids)]
        return base_rollout.RolloutOutput(
            text=samples.texts, logits=[], tokens=[np.asarray(ids, np.int32) for ids in samples.completion_ids],
            left_padded_prompt_tokens=prompt, logprobs=logprobs)

    def get_per_token_logps(self, prompt_tokens, completion_tokens):
        """[B, C] log-probs of the completion tokens (positions after a pad are 0)."""
        completion = np.asarray(completion_tokens)
        mask = (completion != PAD_ID).astype(np.float32)
        return self._logps(np.asarray(prompt_tokens), completion, mask) * mask

    def _logps(self, prompt, completion, mask):
        graphdef, state = nnx.split(self.loaded.model)
        return completion_logps(graphdef, (state,), prompt, completion, mask)

    def update_params(self, params, filter_types=None) -> None:
        """Load new weights (an nnx.State of the model's variables, or a part of them)."""
        nnx.update(self.loaded.model, params)

    def pad_id(self) -> int:
        return PAD_ID

    def eos_id(self) -> int:
        return EOS_ID

    def model(self) -> nnx.Module:
        return self.loaded.model
