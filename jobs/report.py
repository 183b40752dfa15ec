"""Report: merge every evaluation shard of every model into report/ on the bus.

Local:    python -m jobs.report k8s/base/recipes/hybrid.yaml k8s/components/cpu/tier.yaml
Cluster:  the eval image runs the same module after the eval Job completes.
Writes:   report/metrics.json, report/report.md, report/report.html (self-contained), report/*.png.
Refuses to merge while shards are missing, naming them.
"""

from __future__ import annotations

from showwork import cli, log
from showwork.eval import report


def add_arguments(parser):
    parser.add_argument("--shards", type=int, default=None, help="shard count (default: the tier's eval_shards)")


def main(cfg, bus, args):
    logger = log.get("report", run=bus.root)
    marker, _ = report.run(bus, cfg, logger, args.shards)
    print(f"report: {bus.uri('report/report.html')}")
    return marker


if __name__ == "__main__":
    cli.run(__doc__, main, add_arguments=add_arguments, placement=cli.Placement.CPU)
