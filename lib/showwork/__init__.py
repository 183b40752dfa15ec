"""showwork: post-train small Gemma models to show their work (SFT, GRPO, majority-vote evaluation)."""
