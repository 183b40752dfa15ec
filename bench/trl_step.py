"""The TRL side of bench/train_step.py; runs in the torch venv.

Reads a job as JSON on stdin (stage, model_dir, rows, batch, seq_len,
lora_rank, steps, GRPO settings), trains with TRL's SFTTrainer or
GRPOTrainer for steps + 1 optimizer steps, and prints one JSON line: the
seconds of every step after the first, the time from the process's start to
the end of the first step and to its end, and this process's peak RSS. The
reward for GRPO is showwork's own `hybrid` (pure Python, imported from lib/).
"""

import time

STARTED = time.perf_counter()  # what a user's process pays starts here: torch's import is after it

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from showwork.task import rewards

# The same modules our LoRA adapts (lib/showwork/config.py LoraConfig.targets).
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class StepTimes(TrainerCallback):
    def __init__(self):
        self.seconds, self.completion_tokens, self.num_tokens, self._start = [], [], [], 0.0
        self.first_done = None  # perf_counter when the first step ended: the first result

    def on_step_begin(self, args, state, control, **kw):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.seconds.append(time.perf_counter() - self._start)
        if self.first_done is None:
            self.first_done = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "completions/mean_length" in logs:
            self.completion_tokens.append(logs["completions/mean_length"])
        if logs and "num_tokens" in logs:  # SFTTrainer: tokens trained on so far (no padding)
            self.num_tokens.append(logs["num_tokens"])


def hybrid_reward(prompts, completions, answer, **kw):
    return rewards.hybrid(prompts, completions, answer)


def main():
    job = json.loads(sys.stdin.read())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    peft = (LoraConfig(r=job["lora_rank"], lora_alpha=job["lora_alpha"], target_modules=TARGETS, lora_dropout=0.0,
                       task_type="CAUSAL_LM") if job["lora_rank"] else None)
    out = tempfile.mkdtemp(prefix="showwork-bench-trl-")
    timer = StepTimes()
    common = dict(output_dir=out, max_steps=job["steps"] + 1, logging_steps=1, save_strategy="no", report_to=[],
                  use_cpu=True, dataloader_num_workers=0, seed=0, gradient_accumulation_steps=1,
                  # TRL turns gradient checkpointing on by default; the job says whether both sides use it.
                  gradient_checkpointing=job.get("remat", False))
    if job["stage"] == "sft":
        from trl import SFTConfig, SFTTrainer

        rows = [{"prompt": r["prompt"], "completion": r["target"]} for r in job["rows"]]
        # packing: TRL's best-fit decreasing ("bfd", its default strategy) into rows of max_length.
        args = SFTConfig(per_device_train_batch_size=job["batch"], max_length=job["seq_len"], learning_rate=1e-5,
                         packing=job.get("packing", False), **common)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft, callbacks=[timer])
    else:
        from trl import GRPOConfig, GRPOTrainer

        g = job["generations"]
        rows = [{"prompt": r["prompt"], "answer": r["answer"]} for r in job["rows"]]
        args = GRPOConfig(per_device_train_batch_size=job["prompts"] * g, num_generations=g,
                          max_completion_length=job["completion_tokens"], temperature=1.0, top_k=50,
                          beta=0.08, epsilon=0.2, learning_rate=3e-6, max_grad_norm=0.1, **common)
        trainer = GRPOTrainer(model=model, reward_funcs=[hybrid_reward], args=args,
                              train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                              peft_config=peft, callbacks=[timer])
    trainer.train()
    result = {"step_seconds": timer.seconds[1:],
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "first_result_seconds": timer.first_done - STARTED, "total_seconds": time.perf_counter() - STARTED}
    if len(timer.num_tokens) > 1:  # tokens of the timed steps (every step after the first)
        result["timed_tokens"] = timer.num_tokens[-1] - timer.num_tokens[0]
        result["attention"] = str(getattr(model.config, "_attn_implementation", "?"))
    if timer.completion_tokens:
        result["completion_tokens"] = sum(timer.completion_tokens[1:]) / max(len(timer.completion_tokens) - 1, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
