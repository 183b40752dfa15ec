"""Stage a hub dataset once, where the hub is reachable, for recipes to read in pods that cannot.

Run:      python -m jobs.stage_data gsm8k gs://showwork-models/data/gsm8k
          python -m jobs.stage_data glaive gs://showwork-models/data/glaive --limit 200000
          python -m jobs.stage_data code gs://showwork-models/data/mbpp   (MBPP, for data.source code)
Needs:    network and `pip install ./lib[hub]` (Hugging Face `datasets`); GCS credentials for gs://.
Writes:   DEST/train.jsonl (and DEST/test.jsonl for gsm8k and code), the files the GSM8K, glaive
          and math-code recipes name in data.path / data.eval_path.
"""

from __future__ import annotations

import argparse
import sys

from showwork import cli, log
from showwork.task import data


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=sorted(data.STAGED_SPLITS), help="the hub source to copy")
    p.add_argument("dest", help="a directory or gs://bucket/prefix")
    p.add_argument("--limit", type=int, default=None, help="keep the first N rows of each split")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    log.configure()
    with cli.ending():
        written = data.stage(args.source, args.dest, args.limit)
    for uri in written:
        print(uri)
    return written


if __name__ == "__main__":
    main()
