"""What "solve a GSM8K-style question" means: prompts, answer extraction, rewards, and the data they are built from."""
