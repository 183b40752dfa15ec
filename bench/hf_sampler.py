"""The Hugging Face side of bench/sampler.py; runs in the torch venv.

Reads a job as JSON on stdin (model_dir, ids, new_tokens, mode, repeats),
prints one JSON line: tokens/s of the best timed run and the generated ids.
"""

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    job = json.loads(sys.stdin.read())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], torch_dtype=torch.float32)
    model.eval()
    ids = job["ids"]
    width = max(len(r) for r in ids)
    # Left padding, as for any batched decoder-only generation.
    input_ids = torch.tensor([[0] * (width - len(r)) + r for r in ids])
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    temperature, top_k, top_p = job["mode"]
    kwargs = dict(max_new_tokens=job["new_tokens"], min_new_tokens=job["new_tokens"], pad_token_id=0)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    else:
        kwargs.update(do_sample=False)
    best, out = None, None
    with torch.inference_mode():
        model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)  # warm-up
        for _ in range(job["repeats"]):
            start = time.perf_counter()
            out = model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
            seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
    new = out[:, width:].tolist()
    print(json.dumps({"tokens_per_second": sum(len(r) for r in new) / best, "tokens": new}))


if __name__ == "__main__":
    main()
