"""Each stage's cluster deadline, from its recipe: the `deadlines` section as the Jobs' activeDeadlineSeconds.

The recipe is the one home of the numbers (config.DeadlinesConfig, in hours). They reach a JobSet
three ways, all through this module:

* `kustomization`: the block `make configure` writes into every site overlay (and a shipped
  overlay whose recipe sets its own deadlines carries): a ConfigMap kustomize keeps to itself
  (`config.kubernetes.io/local-config`) and replacements that address each replicated job by name
  (`spec.replicatedJobs.[name=sft]`), so they hold in any overlay a user composes, whatever the
  order of its jobs;
* `apply`: `jobs.pipeline --submit` sets them on the JobSets it submits, from the recipe the
  rendered overlay's pods load;
* `check`: tests hold every shipped overlay's rendered deadlines to its recipe (and a Kueue
  `max-exec-time-seconds` label to at least their sum).

The block names only Jobs the overlay has: kustomize refuses a replacement whose Job is missing
(`unable to find field`), which is what a composed overlay that drops a Job should see.

`python -m showwork.deadlines k8s/overlays/<overlay>` prints the block for an overlay's recipe.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from showwork import config
from showwork.manifests import jobset

CONFIGMAP = "showwork-deadlines"


def seconds(section: config.DeadlinesConfig) -> dict[str, int]:
    """Replicated job name -> activeDeadlineSeconds."""
    return {job: max(1, round(hours * 3600)) for job, hours in section.by_job().items()}  # 0 is refused


def recipe_config(docs: list[dict]) -> config.Config:
    """The config the rendered overlay's pods load: the recipe its run ConfigMap names and its tier.yaml,
    both from the recipes ConfigMap the pods mount at /config."""
    cms = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d.get("kind") == "ConfigMap"}
    spec = jobset(docs)["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    env = {}
    for src in spec["containers"][0].get("envFrom", []):
        env.update(cms.get(src.get("configMapRef", {}).get("name"), {}))
    recipe = env.get("SHOWWORK_RECIPE")
    mounted = next((cms[v["configMap"]["name"]] for v in spec.get("volumes", [])
                    if v.get("name") == "config" and "configMap" in v), None)
    if recipe is None or mounted is None:
        raise ValueError("the rendered overlay names no SHOWWORK_RECIPE or mounts no recipes ConfigMap at /config")
    if f"{recipe}.yaml" not in mounted or "tier.yaml" not in mounted:
        raise ValueError(f"the recipes ConfigMap has no {recipe}.yaml or tier.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name in (f"{recipe}.yaml", "tier.yaml"):
            paths.append(Path(tmp) / name)
            paths[-1].write_text(mounted[name])
        return config.load(*paths)


def current(docs: list[dict]) -> dict[str, int | None]:
    """Replicated job name -> its activeDeadlineSeconds as rendered."""
    return {rj["name"]: rj["template"]["spec"].get("activeDeadlineSeconds")
            for rj in jobset(docs)["spec"]["replicatedJobs"]}


def wanted(docs: list[dict]) -> dict[str, int]:
    """The recipe's deadline for each replicated job of the overlay that has one (a job the recipe
    names no deadline for, one a user added, keeps its own)."""
    table = seconds(recipe_config(docs).deadlines)
    return {job: table[job] for job in current(docs) if job in table}


KUEUE_MAX_EXEC = "kueue.x-k8s.io/max-exec-time-seconds"


def check(docs: list[dict]) -> list[str]:
    """Each replicated job whose rendered deadline is not its recipe's, and a Kueue limit on the
    JobSet's admitted time below the sum of its Jobs' deadlines (Kueue would end a run whose every
    Job kept to its deadline), as sentences."""
    have, want = current(docs), wanted(docs)
    found = [f"{job}: activeDeadlineSeconds {have[job]}, the recipe says {s}" for job, s in want.items()
             if have[job] != s]
    limit = jobset(docs)["metadata"].get("labels", {}).get(KUEUE_MAX_EXEC)
    total = sum(want.get(job, have[job] or 0) for job in have)
    if limit is not None and int(limit) < total:
        found.append(f"{KUEUE_MAX_EXEC} {limit} is below the sum of the Jobs' deadlines, {total}")
    return found


def apply(js: dict, table: dict[str, int]) -> list[tuple[str, int | None, int]]:
    """Set each named replicated job's activeDeadlineSeconds in a JobSet (in place); returns
    (job, rendered, set) for each one that changed."""
    changed = []
    for rj in js["spec"]["replicatedJobs"]:
        spec = rj["template"]["spec"]
        if rj["name"] in table and spec.get("activeDeadlineSeconds") != table[rj["name"]]:
            changed.append((rj["name"], spec.get("activeDeadlineSeconds"), table[rj["name"]]))
            spec["activeDeadlineSeconds"] = table[rj["name"]]
    return changed


def kustomization(table: dict[str, int], name: str = CONFIGMAP) -> dict:
    """configMapGenerator and replacements entries that set these deadlines, each job addressed by name.
    A kustomization that includes another carrying the block names its own ConfigMap otherwise: local
    config still passes to the including kustomization, where a second ConfigMap of the name clashes."""
    cm = {"name": name, "literals": [f"{job}={s}" for job, s in table.items()],
          "options": {"disableNameSuffixHash": True,
                      "annotations": {"config.kubernetes.io/local-config": "true"}}}
    replacements = [{"source": {"kind": "ConfigMap", "name": name, "fieldPath": f"data.{job}"},
                     "targets": [{"select": {"group": "jobset.x-k8s.io", "kind": "JobSet"},
                                  "fieldPaths": [f"spec.replicatedJobs.[name={job}].template.spec.activeDeadlineSeconds"]}]}
                    for job in table]
    return {"configMapGenerator": [cm], "replacements": replacements}


def kustomization_yaml(table: dict[str, int], name: str = CONFIGMAP) -> str:
    """`kustomization` as the YAML to paste into an overlay's kustomization.yaml."""
    return yaml.safe_dump(kustomization(table, name), sort_keys=False, default_flow_style=None, width=1000)


def main(argv=None) -> int:
    """python -m showwork.deadlines OVERLAY: the block that gives OVERLAY its recipe's deadlines."""
    import argparse

    from showwork.manifests import rendered

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("overlay", help="a kustomize overlay directory (its SHOWWORK_RECIPE names the recipe)")
    args = p.parse_args(argv)
    docs = rendered(args.overlay)
    # Named after the overlay: one that includes another carrying a block gets no clash.
    name = f"{CONFIGMAP}-{Path(args.overlay).resolve().name}"
    print(f"# merge into {args.overlay}/kustomization.yaml: the recipe's deadlines for the Jobs this overlay "
          f"has (now: {'; '.join(check(docs)) or 'already as the recipe says'})")
    print(kustomization_yaml(wanted(docs), name), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
