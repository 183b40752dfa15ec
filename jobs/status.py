"""Status of a run: JobSet/Job/Pod state per stage and the bus markers, as a table.

Usage:    python -m jobs.status RUN_ID [--root gs://BUCKET/runs] [--namespace default]
The JobSet is named showwork-RUN_ID (the overlays' convention); a pipeline submitted a stage
at a time (`jobs.pipeline --submit`) is found by that name's label on its stage JobSets.
Without a reachable cluster it says so and shows the bus markers alone.
"""

from __future__ import annotations

import argparse
import os
import sys

from showwork import status
from showwork.bus import Bus, BusError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_id")
    p.add_argument("--root", default=os.environ.get("SHOWWORK_ROOT", "runs"))
    p.add_argument("--namespace", default="default")
    args = p.parse_args(argv)

    cluster: dict[str, str] = {}
    try:
        cluster = status.cluster_stages(f"showwork-{args.run_id}", args.namespace)
    except Exception as err:  # no kubeconfig, unreachable API server, no such JobSet
        reason = getattr(err, "reason", None) or str(err).splitlines()[0][:160]
        print(f"cluster: unavailable ({type(err).__name__}: {reason}); showing bus markers only", file=sys.stderr)
    try:
        markers = status.bus_stages(Bus(f"{args.root.rstrip('/')}/{args.run_id}"))
    except (BusError, OSError) as err:
        print(f"bus: unavailable ({err})", file=sys.stderr)
        markers = {}
    if not cluster and not markers:
        print(f"nothing known about run {args.run_id!r} in the cluster or under {args.root}", file=sys.stderr)
        return 1
    stages = list(cluster) + [s for s in sorted(markers) if s not in cluster]
    rows = [status.Row(s, cluster.get(s, "-"), markers.get(s, "-")) for s in stages]
    print(status.table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
