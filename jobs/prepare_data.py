"""Prepare data: clean, split and format the recipe's source onto the bus.

Local:    python -m jobs.prepare_data k8s/base/recipes/quickstart.yaml k8s/components/cpu/tier.yaml
Cluster:  the data-prep image runs the same module with --root gs://BUCKET/runs (k8s/base).
Writes:   data/train.jsonl, data/eval.jsonl, data/stats.json, data/_SUCCESS.
A second run with the same config is skipped; with a changed config it is refused.
"""

from __future__ import annotations

import json

from showwork import cli, log, stages
from showwork.task import data


def main(cfg, bus, args=None):
    logger = log.get("prepare_data", run=bus.root)
    marker, _ = data.prepare(bus, cfg, logger)
    stats = bus.read_json(stages.DATA_STATS)
    print(json.dumps({"bus": bus.root, **stats}, indent=1))
    return marker


if __name__ == "__main__":
    cli.run(__doc__, main, placement=cli.Placement.CPU)
