"""The stage graph: which stages a recipe has and in what order, where each
keeps its files on the bus, which config sections its digest covers, and
which model it starts from.

    data -> sft -> self-teach -> grpo/s-0 .. grpo/s-(K-1) -> eval/<model>/shard-I-of-N -> report

Each stage is present only when the recipe has its section. This module
only knows (it imports nothing of showwork but `errors`, so every package may use it);
`showwork.pipeline` runs the stages and `jobs/` wraps each one for its
container.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from showwork.errors import UsageError

NAMES = ("data", "sft", "self-teach", "grpo", "eval", "report")

# The data stage's files; every training and evaluation stage reads them.
TRAIN_ROWS, EVAL_ROWS, DATA_STATS = "data/train.jsonl", "data/eval.jsonl", "data/stats.json"
DATA_OUTPUTS = (TRAIN_ROWS, EVAL_ROWS, DATA_STATS)

# Self-teaching's own files: kept samples (written last) and the yield.
SELF_TEACH_SAMPLES, SELF_TEACH_YIELD = "self-teach/samples.jsonl", "self-teach/yield.json"
SELF_TEACH_ANALYSIS = "self-teach/analysis.json"  # every round's error analysis (train.self_teach)

REPORT = "report"
# The marker's outputs (and accuracy.png where a method is scored by accuracy: all but `loss`).
REPORT_FILES = ("metrics.json", "report.md", "report.html")


@dataclass(frozen=True)
class Stage:
    name: str  # one of NAMES: what --from / --only accept
    key: str  # the stage's bus prefix and marker name: sft, grpo/s-1, eval/base/shard-0-of-2
    label: str  # what a progress line shows
    args: tuple = ()  # (session,) for GRPO, (model, index, count) for an eval shard


def grpo_key(session: int) -> str:
    return f"grpo/s-{session}"


def shard_key(model: str, index: int, count: int) -> str:
    return f"eval/{model}/shard-{index}-of-{count}"


def model_key(stage_key: str) -> str:
    """Where a training stage exports its model."""
    return f"{stage_key}/model"


def metrics_key(stage_key: str) -> str:
    return f"{stage_key}/metrics.jsonl"


def samples_key(stage_key: str) -> str:
    """A GRPO session's logged completions (grpo.log_completions), one row per prompt and step."""
    return f"{stage_key}/samples.jsonl"


# Where each training stage keeps its checkpoints and TensorBoard events
# (GRPO's sessions share one directory: steps are numbered across sessions).
TRAINING_DIRS = ("sft", "self-teach", "grpo")


def checkpoints_key(training_dir: str) -> str:
    return f"{training_dir}/checkpoints"


def tensorboard_key(training_dir: str) -> str:
    return f"{training_dir}/tensorboard"


def report_key(name: str) -> str:
    return f"{REPORT}/{name}"


def plan(cfg, shards: int | None = None) -> list[Stage]:
    """The recipe's stages in order."""
    out = [Stage("data", "data", "prepare data")]
    if cfg.sft is not None:
        out.append(Stage("sft", "sft", "SFT"))
    if cfg.self_teach is not None:
        out.append(Stage("self-teach", "self-teach", "self-teaching"))
    if cfg.grpo is not None:
        for k in range(cfg.grpo.sessions):
            out.append(Stage("grpo", grpo_key(k), f"GRPO session {k + 1}/{cfg.grpo.sessions}", (k,)))
    count = shards or cfg.tier.eval_shards
    for model in cfg.eval.models:
        for index in range(count):
            out.append(Stage("eval", shard_key(model, index, count),
                             f"evaluate {model} (shard {index + 1}/{count})", (model, index, count)))
    out.append(Stage("report", REPORT, "report", (count,)))
    return out


# ---------------------------------------------------------------- digests

# The config each stage's output depends on. A stage whose marker holds
# another digest is refused, so these lists decide when a changed recipe
# needs a new run id. `system` is the prompt's system text, `batch` the
# tier's train_batch; every other name is a section of Config. The values
# are pinned by tests/golden/stage_digests.json: changing a list changes
# every existing run's digests.
_SECTIONS = {
    "data": ("data", "system"),
    "sft": ("model", "data", "prompt", "sft", "batch"),
    "self-teach": ("model", "data", "prompt", "sft", "self_teach", "batch"),
    "grpo": ("model", "data", "prompt", "sft", "grpo", "batch"),
    "eval": ("eval", "model", "data", "prompt", "sft", "grpo"),
    "report": ("eval", "model", "data", "sft", "grpo"),
}


def _section(cfg, name: str):
    if name == "system":
        return cfg.prompt.system
    if name == "batch":
        return cfg.tier.train_batch
    return getattr(cfg, name)


def digest(cfg, stage: Stage) -> str:
    """The config digest of one stage of this recipe."""
    sections = {name: _section(cfg, name) for name in _SECTIONS[stage.name]}
    # A self-taught model, and GRPO that starts from it, depend on its section too; added only when
    # present, so recipes without one keep the digests they had.
    if stage.name in ("eval", "grpo") and cfg.self_teach is not None:
        sections["self_teach"] = cfg.self_teach
    if stage.name == "eval":
        model, index, count = stage.args
        sections.update(name=model, shard=[index, count])
    elif stage.name == "report":
        sections["shards"] = stage.args[0]
    return hash_sections(**sections)


def as_data(section) -> object:
    """A JSON-ready view of a config section (dataclass, tuple, dict, scalar)."""
    if dataclasses.is_dataclass(section):
        return {f.name: as_data(getattr(section, f.name)) for f in dataclasses.fields(section)
                if not _omitted(f, getattr(section, f.name))}
    if isinstance(section, (tuple, list)):
        return [as_data(v) for v in section]
    if isinstance(section, dict):
        return {k: as_data(v) for k, v in section.items()}
    return section


def _omitted(f: dataclasses.Field, value) -> bool:
    """Left out of digests: a field added after runs existed (config.ADDED) while at its default,
    and a logging-only field (config.LOGGING) always."""
    kind = f.metadata.get("digest")
    return kind == "never" or (kind == "omit_at_default" and value == f.default)


def hash_sections(**sections) -> str:
    """A stable hash of config sections: every field, sorted keys, compact JSON."""
    blob = json.dumps(as_data(sections), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- models


def eval_model_key(cfg, name: str) -> str | None:
    """The bus prefix of the model a report calls `name`; None for the base model."""
    if name == "base":
        return None
    if name == "sft" and cfg.sft is not None:
        return model_key("sft")
    if name == "self-teach" and cfg.self_teach is not None:
        return model_key("self-teach")
    if name == "grpo" and cfg.grpo is not None:
        return model_key(grpo_key(cfg.grpo.sessions - 1))
    if name in ("sft", "self-teach", "grpo"):
        raise UsageError(f"eval names model {name!r} but the recipe has no {name.replace('-', '_')} section")
    raise UsageError(f"unknown model to evaluate {name!r}")


def start_key(cfg, stage_name: str) -> str | None:
    """The bus prefix of the model a training stage starts from; None for the base model.

    SFT starts from the base model; self-teaching from the SFT export when the
    recipe has SFT; GRPO from the self-taught model when the recipe has
    self-teaching (SFT, self-teaching, then GRPO), else from SFT's.
    """
    if stage_name == "grpo" and cfg.self_teach is not None:
        return model_key("self-teach")
    if stage_name != "sft" and cfg.sft is not None:
        return model_key("sft")
    return None
