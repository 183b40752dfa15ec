"""What one SFT gradient pass asks of memory, as XLA plans it: for each pass size (sequences per
forward/backward pass) and with remat off and on, the compiled program's temporary buffers
(`memory_analysis().temp_size_in_bytes`: everything alive at once beyond weights and inputs), and
how many of remat's optimization barriers survive XLA's optimization, and what is alive at the
peak of the compiled schedule, by array shape (`live_at_peak`: which activations the backward
pass keeps).

The pass is `sft.make_step_fns`'s gradient, LoRA 16 on the attention and MLP projections, over
sequences of bench/train_step.py's SFT data cut to --seq-len tokens: the same program a training
step runs per pass. A step of B sequences in passes of b (`sft.batch_size` b with
`sft.gradient_accumulation` B/b) holds one pass's temporaries at a time.

    .venv/bin/python bench/step_memory.py --json /tmp/step-memory.json     # ~4 min
    .venv/bin/python bench/step_memory.py --model tiny --passes 1 2                 # smoke
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "lib"), str(ROOT / "bench")]


def barriers(hlo_text: str) -> int:
    """Optimization barriers in an HLO module's text (remat places one around each recomputed block)."""
    return hlo_text.count(" opt-barrier(")


BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1}
VIEWS = ("parameter", "bitcast", "get-tuple-element", "tuple", "while", "constant")
INSTRUCTION = re.compile(r"(?:ROOT )?%(\S+) = (\(.*?\)|\S+) ([\w-]+)\((.*)")


def array_bytes(shape: str) -> int:
    """Bytes of an HLO shape ("f32[512,2048]{1,0}", or a tuple of them)."""
    total = 0
    for dtype, dims in re.findall(r"(\w+?)\[([\d,]*)\]", shape):
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        total += count * BYTES.get(dtype, 4)
    return total


def live_at_peak(hlo_text: str) -> dict:
    """The arrays alive at the peak of a scheduled module's entry computation, by shape.

    A value lives from its instruction to its last user in the schedule; bitcasts and tuple
    elements are views of what they read (they keep it alive, they add no bytes); parameters,
    constants and loop state are not counted, and a loop's own temporaries are not seen: an
    approximation of XLA's buffer assignment that says *which* arrays make its peak."""
    entry = hlo_text[hlo_text.index("\nENTRY"):]
    lines = [line.strip() for line in entry.split("\n")[1:] if line.strip().startswith(("%", "ROOT"))]
    born, last, size, shape_of, source = {}, {}, {}, {}, {}
    for i, line in enumerate(lines):
        m = INSTRUCTION.match(line)
        if not m:
            continue
        name, shape, op, rest = m.groups()
        born[name] = last[name] = i
        operands = [o for o in re.findall(r"%([\w.\-]+)", rest) if o in born]
        size[name], shape_of[name] = (0 if op in VIEWS else array_bytes(shape)), re.sub(r"\{[^}]*\}", "", shape)
        if op in ("bitcast", "get-tuple-element") and operands:
            source[name] = operands[0]
        for o in operands:
            while o in source:  # a view keeps what it views alive
                last[o] = i
                o = source[o]
            last[o] = i
    change = collections.Counter()
    for name in born:
        change[born[name]] += size[name]
        change[last[name] + 1] -= size[name]
    running, peak, at = 0, 0, 0
    for i in range(len(lines)):
        running += change[i]
        if running > peak:
            peak, at = running, i
    by_shape = collections.defaultdict(lambda: [0, 0])
    for name in born:
        if size[name] and born[name] <= at <= last[name]:
            by_shape[shape_of[name]][0] += 1
            by_shape[shape_of[name]][1] += size[name]
    ranked = sorted(by_shape.items(), key=lambda kv: -kv[1][1])
    return {"peak_bytes": peak, "by_shape": [{"shape": k, "count": c, "bytes": b} for k, (c, b) in ranked]}


def measure(model: str, rank: int, seq_len: int, passes: list[int], remat: bool) -> list[dict]:
    """One row per pass size: XLA's temporary bytes and the barriers before and after optimization."""
    from train_step import sft_rows

    from showwork.config import LoraConfig
    from showwork.model import loader, lora
    from showwork.train import sft
    from showwork.train import step as step_lib

    loaded = loader.load(model, remat=remat)
    loaded.model = lora.add(loaded.model, LoraConfig(rank, 2.0 * rank, lora.DEFAULT_TARGETS))
    seqs = sft.tokenize(sft_rows(max(passes), seq_len), loaded.tokenizer, seq_len)
    if len(seqs.prompts) < max(passes):
        raise SystemExit(f"--seq-len {seq_len} leaves no room for the target after the prompt")
    source = sft.Padded(seqs)
    graphdef, trainable, frozen = step_lib.split(loaded.model)
    trainable, compute = step_lib.master(trainable)
    grad_fn = sft.make_step_fns(graphdef, None, compute)[0]
    rows = []
    for size in passes:
        arrays, real = source.batch(list(range(size)))
        lowered = grad_fn.lower(trainable, frozen, *arrays)
        compiled = lowered.compile()
        memory = compiled.memory_analysis()
        rows.append({"remat": remat, "pass_sequences": size, "tokens": real,
                     "temp_gib": memory.temp_size_in_bytes / 2**30,
                     "arguments_gib": memory.argument_size_in_bytes / 2**30,
                     "barriers_before": barriers(lowered.as_text(dialect="hlo")),
                     "barriers_after": barriers(compiled.as_text()),
                     "live_at_peak": live_at_peak(compiled.as_text())})
        print({k: v for k, v in rows[-1].items() if k != "live_at_peak"}, flush=True)
    return rows


def main(argv=None):
    from sampler import write_summary

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m", choices=["gemma3-270m", "tiny"])
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--passes", type=int, nargs="+", default=[1, 2, 4], help="sequences per pass to compile")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    rows = [r for remat in (False, True) for r in measure(args.model, args.rank, args.seq_len, args.passes, remat)]
    return write_summary({"model": args.model, "seq_len": args.seq_len, "lora_rank": args.rank, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
