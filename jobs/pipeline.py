"""The whole pipeline on one machine: data, SFT, self-teaching, GRPO sessions,
evaluation of every model (every shard), report — the recipe's stages, in order.

Local:    python -m jobs.pipeline k8s/base/recipes/demo.yaml k8s/components/cpu/tier.yaml
          [--root runs] [--run-id ID] [--from STAGE | --only STAGE]
Cluster:  not used: a JobSet runs the same stage modules as separate jobs (k8s/overlays).
Stages:   data, sft, self-teach, grpo, eval, report. Finished stages are skipped, so a
re-run resumes a half-finished run, and a finished run just prints the report's location.
"""

from __future__ import annotations

from showwork import cli, log, pipeline, stages


def add_arguments(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--from", dest="start", choices=stages.NAMES, help="start at this stage")
    group.add_argument("--only", choices=stages.NAMES, help="run just this stage")


def main(cfg, bus, args):
    logger = log.get("pipeline", run=bus.root, recipe=cfg.recipe)
    seconds = pipeline.run(cfg, bus, logger, args.start, args.only)
    logger.info("pipeline finished", seconds=round(seconds, 1))
    if bus.exists("report/report.html"):
        print(f"report: {bus.uri('report/report.html')}")
        print(f"        {bus.uri('report/report.md')}")


if __name__ == "__main__":
    cli.run(__doc__, main, add_arguments=add_arguments)
