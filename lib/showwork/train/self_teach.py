"""Self-teaching (rejection-sampling fine-tuning, as in STaR / RFT).

Sample k solutions per training question with the current model, keep the
ones that are correct *and* well-formed, and fine-tune on them. The stage
writes the kept samples (`self-teach/samples.jsonl`), the yield
(`self-teach/yield.json`: questions with at least one keeper, samples kept
of sampled), and then runs SFT on the kept samples into `self-teach/model`.
"""

from __future__ import annotations

from showwork.errors import RunError, UsageError
from showwork import stages
from showwork.bus import Bus, StageResult, run_once
from showwork.config import SelfTeachConfig
from showwork.model import loader, meshes
from showwork.sample import sampler
from showwork.task import answers
from showwork.task.prompts import END_OF_TURN
from showwork.train import sft


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


def sample_keepers(bus: Bus, loaded, rows: list[dict], st: SelfTeachConfig, batch: int, log) -> tuple[list, dict]:
    """Sample and filter once: the kept samples are on the bus after the first attempt."""
    if not bus.exists(stages.SELF_TEACH_SAMPLES):
        settings = sampler.SampleSettings(st.max_tokens, st.temperature, st.top_k, None)
        prompts = [r["prompt"] for r in rows for _ in range(st.samples_per_question)]
        samples = sampler.generate(loaded, prompts, settings, seed=st.sft.seed, batch_size=batch)
        kept, stats = keepers(rows, samples.texts, st.samples_per_question, st.keep_per_question)
        bus.write_json(stages.SELF_TEACH_YIELD, stats)
        bus.write_jsonl(stages.SELF_TEACH_SAMPLES, kept)  # written last: its presence means sampling finished
        log.info("self-teach yield", **stats)
    return bus.read_jsonl(stages.SELF_TEACH_SAMPLES), bus.read_json(stages.SELF_TEACH_YIELD)


def run(bus: Bus, cfg, log):
    """The self-teaching stage: sample, keep, fine-tune on the keepers, export, mark."""
    st = cfg.self_teach
    if st is None:
        raise UsageError(f"recipe {cfg.recipe!r} has no self_teach section")
    stage = stages.Stage("self-teach", "self-teach", "self-teaching")
    digest = stages.digest(cfg, stage)

    def body() -> StageResult:
        rows = bus.read_jsonl(stages.TRAIN_ROWS)[: st.questions]
        loaded = loader.load_from(bus, stages.start_key(cfg, "self-teach"), cfg.model, cfg.tier.dtype,
                                  meshes.tier_mesh(cfg.tier.mesh), 0, cfg.tier.remat)
        kept, stats = sample_keepers(bus, loaded, rows, st, cfg.tier.eval_batch, log)
        if not kept:
            raise RunError(f"self-teaching kept no samples ({stats}): the model solves none of "
                             f"{stats['questions']} questions in the required format; run SFT first")
        done = sft.train_and_export(bus, cfg, loaded, kept, st.sft, stage.key, digest, log)
        return StageResult(outputs=done["outputs"] + [stages.SELF_TEACH_SAMPLES, stages.SELF_TEACH_YIELD],
                           inputs=[stages.TRAIN_ROWS], metrics={**stats, **done["metrics"]})

    return run_once(bus, stage.key, digest, body, log)
