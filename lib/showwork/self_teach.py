"""Self-teaching (rejection-sampling fine-tuning, as in STaR / RFT).

Sample k solutions per training question with the current model, keep the
ones that are correct *and* well-formed, and fine-tune on them. The stage
writes the kept samples (`self-teach/samples.jsonl`), the yield
(`self-teach/yield.json`: questions with at least one keeper, samples kept
of sampled), and then runs SFT on the kept samples into `self-teach/model`.
"""

from __future__ import annotations

from showwork import answers, sampling, training
from showwork.bus import Bus, StageResult, run_once
from showwork.prompts import END_OF_TURN


def keepers(rows: list[dict], texts: list[str], k: int, keep_per_question: int) -> tuple[list[dict], dict]:
    """Filter k samples per row (row-major) to correct, well-formed, distinct ones."""
    kept, solved = [], 0
    for i, row in enumerate(rows):
        seen, mine = set(), []
        for text in texts[i * k:(i + 1) * k]:
            body = text.strip()
            if body in seen or not answers.check_format(body).well_formed or not answers.is_correct(body, row["answer"]):
                continue
            seen.add(body)
            mine.append({**row, "target": body + END_OF_TURN, "source": "self-teach"})
        solved += bool(mine)
        kept.extend(mine[:keep_per_question])
    sampled = len(rows) * k
    return kept, {"questions": len(rows), "questions_solved": solved, "samples": sampled,
                  "kept": len(kept), "yield": len(kept) / sampled if sampled else 0.0}


def run(bus: Bus, cfg, log):
    from showwork import config as config_lib, sft

    st = cfg.self_teach
    if st is None:
        raise ValueError(f"recipe {cfg.recipe!r} has no self_teach section")
    digest = config_lib.digest(model=cfg.model, data=cfg.data, prompt=cfg.prompt, sft=cfg.sft, self_teach=st,
                               batch=cfg.tier.train_batch)

    def body() -> StageResult:
        rows = bus.read_jsonl("data/train.jsonl")[: st.questions]
        loaded = training.start_model(bus, cfg)
        if not bus.exists("self-teach/samples.jsonl"):
            settings = sampling.SampleSettings(st.max_tokens, st.temperature, st.top_k, None)
            prompts = [r["prompt"] for r in rows for _ in range(st.samples_per_question)]
            samples = sampling.generate(loaded, prompts, settings, seed=st.sft.seed, batch_size=cfg.tier.eval_batch)
            kept, stats = keepers(rows, samples.texts, st.samples_per_question, st.keep_per_question)
            bus.write_json("self-teach/yield.json", stats)
            bus.write_jsonl("self-teach/samples.jsonl", kept)  # written last: its presence means sampling finished
            log.info("self-teach yield", **stats)
        kept = bus.read_jsonl("self-teach/samples.jsonl")
        stats = bus.read_json("self-teach/yield.json")
        if not kept:
            raise ValueError(f"self-teaching kept no samples ({stats}): the model solves none of "
                             f"{stats['questions']} questions in the required format; run SFT first")
        lora = cfg.model.lora
        if lora:
            loaded.model = training.add_lora(loaded.model, lora.rank, lora.alpha, lora.targets, lora.quantize, st.sft.seed)
        s = st.sft
        final = sft.train(bus, loaded, kept, stage="self-teach", seed=s.seed, batch=s.batch_size or cfg.tier.train_batch,
                          accumulation=s.gradient_accumulation, epochs=s.epochs, max_steps=s.max_steps,
                          max_seq_len=s.max_seq_len, opt=s.optimizer, schedule=s.schedule,
                          checkpoint_every=s.checkpoint_every, keep_checkpoints=s.keep_checkpoints,
                          digest=digest, log=log)
        if lora:
            training.merged_params(loaded.model)
        outputs = training.export(bus, "self-teach/model", loaded)
        return StageResult(outputs=outputs + ["self-teach/samples.jsonl", "self-teach/yield.json"],
                           inputs=["data/train.jsonl"], metrics={**stats, **final})

    return run_once(bus, "self-teach", digest, body, log)
