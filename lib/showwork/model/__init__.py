"""Models: one adapter per Gemma family, loading, tokenizer, GGUF conversion, the tiny test model, meshes, LoRA, export."""
