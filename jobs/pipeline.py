"""The whole pipeline on one machine: data, SFT, self-teaching, GRPO sessions,
evaluation of every model (every shard), report — the recipe's stages, in order.

Local:    python -m jobs.pipeline k8s/base/recipes/demo.yaml k8s/components/cpu/tier.yaml
          [--root runs] [--run-id ID] [--from STAGE | --only STAGE]
Stages:   data, sft, self-teach, grpo, eval, report. Finished stages are skipped, so a
re-run resumes a half-finished run, and a finished run just prints the report's location.

Cluster, one JobSet:        kubectl apply -k k8s/overlays/<overlay>
Cluster, a JobSet a stage:  python -m jobs.pipeline --submit k8s/overlays/<overlay> [--namespace NS]
          [--emit DIR]  (showwork.submit: each stage its own JobSet, submitted when the stages it
          depends on have completed, so Kueue releases quota between stages; --emit writes the
          manifests it would submit instead of submitting them)
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from showwork import cli, errors, log, pipeline, stages


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


def submit_main(argv: list[str], cluster=None) -> None:
    """--submit: one JobSet per stage on the cluster of the kube config (or `cluster`, for tests)."""
    from showwork import submit

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--submit", metavar="OVERLAY", required=True,
                   help="an overlay directory (rendered with kubectl kustomize) or a rendered YAML file")
    p.add_argument("--namespace", help="default: the JobSet's own, else the kube context's, else 'default'")
    p.add_argument("--emit", metavar="DIR", help="write the manifests, one file per stage in order; submit nothing")
    p.add_argument("--poll-s", type=float, default=30.0, help="seconds between looks at the running stages")
    args = p.parse_args(argv)
    log.configure()
    logger = log.get("submit", overlay=args.submit)
    with cli.ending():
        others, order = submit.render(args.submit, logger)
        if args.emit:
            for path in submit.emit(others, order, pathlib.Path(args.emit)):
                print(path)
            return
        namespace = (args.namespace or order[0].manifest["metadata"].get("namespace") or submit.context_namespace()
                     or "default")
        outcome = submit.submit(cluster or submit.KubeCluster(namespace), others, order, logger, args.poll_s)
        if not outcome.ok:
            raise errors.RunError(f"stage {outcome.failed} failed ({outcome.message}); the stages after it were "
                                  f"not submitted. Completed: {', '.join(outcome.completed) or 'none'}")
        logger.info("pipeline completed", stages=outcome.completed)


if __name__ == "__main__":
    if any(a == "--submit" or a.startswith("--submit=") for a in sys.argv[1:]):
        submit_main(sys.argv[1:])
    else:
        cli.run(__doc__, main, add_arguments=add_arguments)
