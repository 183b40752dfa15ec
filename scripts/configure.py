"""Your GKE site in one place: project, bucket, registry and tag, written over the shipped overlays.

    make configure PROJECT=my-proj BUCKET=my-showwork-bus [MODELS_BUCKET=...] [REGISTRY=us-docker.pkg.dev/my-proj/showwork] [TAG=0.1.0]
    kubectl apply -k k8s/site/hybrid-v5e-8

The shipped GKE overlays (those with a v5e tier) carry placeholders: the
Workload Identity service account `showwork@PROJECT_ID...`, the bus
`gs://showwork-runs` and the bucket of staged models and data
`gs://showwork-models` (the recipes' paths, the gcsfuse mounts). For each,
this writes `k8s/site/<overlay>/` (ignored by git), an overlay of the shipped
one that sets the service account, the bus root, the two buckets everywhere
the recipes and mounts name them and, with REGISTRY, the images
(`<registry>/showwork-<stage>:<tag>`, as
`scripts/build-images.sh --platform tpu --tag TAG` then `docker push` leave
them). Without REGISTRY the images keep skaffold's artifact names, for
`skaffold run --default-repo`. Each written overlay is rendered and refused
if a placeholder or an untagged image is left. Each Job's activeDeadlineSeconds
is set from the `deadlines` section of the overlay's recipe (showwork.deadlines),
so a deadline edited in a recipe reaches the cluster at the next configure.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from showwork import deadlines, manifests
from showwork.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = REPO / "k8s" / "overlays"
STAGES = ("data-prep", "sft", "grpo-session", "eval")
RECIPES = REPO / "k8s" / "base" / "recipes"
PLACEHOLDERS = ("PROJECT_ID", "showwork-runs", "showwork-models")
MOUNTS = "spec.replicatedJobs.*.template.spec.template.spec.volumes.[name=models].csi.volumeAttributes.bucketName"
# Google Cloud's naming rules: project ids 6-30 characters; bucket names 3-63 (dots aside).
PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
BUCKET = re.compile(r"[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]")
REGISTRY = re.compile(r"[a-z0-9.-]+(:\d+)?(/[a-z0-9._-]+)+")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def gke_overlays() -> list[str]:
    """Overlays whose tier is a TPU one (they name a v5e component)."""
    out = []
    for path in sorted(OVERLAYS.glob("*/kustomization.yaml")):
        components = yaml.safe_load(path.read_text()).get("components", [])
        if any(Path(c).name.startswith("v5e") for c in components):
            out.append(path.parent.name)
    return out


def check(args) -> None:
    rules = [("project", PROJECT, args.project), ("bucket", BUCKET, args.bucket),
             ("models bucket", BUCKET, args.models_bucket), ("tag", TAG, args.tag)]
    if args.registry:
        rules.append(("registry", REGISTRY, args.registry))
    for name, rule, value in rules:
        if not rule.fullmatch(value) or any(p in value for p in PLACEHOLDERS):
            raise SystemExit(f"configure: {name} {value!r} is not a valid {name} name")


def site_recipes(folder: Path, args) -> list[str]:
    """Every shipped recipe with the two buckets replaced, written under `folder`/recipes."""
    (folder / "recipes").mkdir(parents=True, exist_ok=True)
    names = []
    for recipe in sorted(RECIPES.glob("*.yaml")):
        text = recipe.read_text().replace("gs://showwork-models/", f"gs://{args.models_bucket}/")
        (folder / "recipes" / recipe.name).write_text(text.replace("gs://showwork-runs/", f"gs://{args.bucket}/"))
        names.append(f"recipes/{recipe.name}")
    return names


def site_overlay(overlay: str, out: Path, args, table: dict[str, int] | None = None) -> str:
    """The kustomization of `overlay` on this site (its recipe files written beside it)."""
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(OVERLAYS / overlay, out / overlay)],
        "configMapGenerator": [
            {"name": "showwork-run", "behavior": "merge", "literals": [f"SHOWWORK_ROOT=gs://{args.bucket}/runs"]},
            {"name": "showwork-recipes", "behavior": "merge", "files": site_recipes(out / overlay, args)}],
        "patches": [{"target": {"kind": "ServiceAccount", "name": "showwork"},
                     "patch": yaml.safe_dump([{"op": "replace",
                                               "path": "/metadata/annotations/iam.gke.io~1gcp-service-account",
                                               "value": f"showwork@{args.project}.iam.gserviceaccount.com"}])}],
    }
    components = yaml.safe_load((OVERLAYS / overlay / "kustomization.yaml").read_text()).get("components", [])
    if any(Path(c).name == "gcsfuse" for c in components):  # the models bucket's mounts
        doc["configMapGenerator"].append({"name": "showwork-site", "literals": [f"MODELS_BUCKET={args.models_bucket}"],
                                          "options": {"disableNameSuffixHash": True}})
        doc["replacements"] = [{"source": {"kind": "ConfigMap", "name": "showwork-site", "fieldPath": "data.MODELS_BUCKET"},
                                "targets": [{"select": {"kind": "JobSet"}, "fieldPaths": [MOUNTS]}]}]
    if table:  # the recipe's deadlines, under a name of our own (the shipped overlay may carry the block)
        block = deadlines.kustomization(table, name="showwork-site-deadlines")
        doc["configMapGenerator"] += block["configMapGenerator"]
        doc.setdefault("replacements", []).extend(block["replacements"])
    if args.registry:
        doc["images"] = [{"name": f"showwork-{s}", "newName": f"{args.registry}/showwork-{s}", "newTag": args.tag}
                         for s in STAGES]
    head = (f"# Generated by scripts/configure.py (make configure) for project {args.project}: do not edit.\n"
            f"# Apply: kubectl apply -k {out.relative_to(REPO) if out.is_relative_to(REPO) else out}/{overlay}\n")
    return head + yaml.safe_dump(doc, sort_keys=False)


def leftovers(rendered: str) -> list[str]:
    """Placeholders and untagged images left in a rendered overlay."""
    found = [p for p in PLACEHOLDERS if p in rendered]
    for image in re.findall(r"^\s*image: (\S+)$", rendered, re.M):
        if ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
            found.append(f"untagged image {image}")
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", required=True)
    p.add_argument("--bucket", required=True, help="the bus bucket (runs go under gs://BUCKET/runs)")
    p.add_argument("--models-bucket", help="where models and data are staged (default: the bus bucket)")
    p.add_argument("--registry", help="where your images are pushed, e.g. us-docker.pkg.dev/PROJECT/showwork")
    p.add_argument("--tag", default="0.1.0")
    p.add_argument("--out", default=str(REPO / "k8s" / "site"))
    args = p.parse_args(argv)
    args.models_bucket = args.models_bucket or args.bucket
    check(args)
    out = Path(args.out).resolve()
    for overlay in gke_overlays():
        folder = out / overlay
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "kustomization.yaml").write_text(site_overlay(overlay, out, args))
        try:  # the site's recipe files as the pods will load them, then its deadlines written in
            table = deadlines.wanted(manifests.rendered(str(folder)))
        except (ValueError, UsageError) as err:
            raise SystemExit(f"configure: {folder}: {err}")
        (folder / "kustomization.yaml").write_text(site_overlay(overlay, out, args, table))
        rendered = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True)
        if rendered.returncode:
            raise SystemExit(f"configure: {folder} does not render: {rendered.stderr.strip()}")
        if left := leftovers(rendered.stdout):
            raise SystemExit(f"configure: {folder} still has {', '.join(left)}")
        print(f"{folder}: kubectl apply -k {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
