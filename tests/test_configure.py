"""`make configure` (scripts/configure.py): one place for project, buckets, registry and tag; what it
writes over every shipped GKE overlay renders with none of the shipped placeholders left."""

import subprocess
import sys

import pytest
import yaml

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import configure  # noqa: E402

pytestmark = pytest.mark.skipif(subprocess.run(["which", "kubectl"], capture_output=True).returncode != 0,
                                reason="kubectl (with kustomize) is not installed")


def render(folder) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_every_gke_overlay_gets_the_sites_project_buckets_and_images(tmp_path):
    site = tmp_path / "site"
    configure.main(["--project", "acme-ml-42", "--bucket", "acme-bus", "--models-bucket", "acme-models",
                    "--registry", "europe-docker.pkg.dev/acme-ml-42/showwork", "--tag", "0.1.0", "--out", str(site)])
    overlays = configure.gke_overlays()
    assert {"hybrid-v5e-8", "hybrid-v5e-16", "relay-consensus-v5e-8", "efficiency-v5e-4"} <= set(overlays)
    assert not any(o.endswith("-cpu") for o in overlays)
    for overlay in overlays:
        docs = render(site / overlay)
        text = yaml.safe_dump_all(docs)
        assert not configure.leftovers(text) and "PROJECT_ID" not in text and "showwork-runs" not in text
        (sa,) = [d for d in docs if d["kind"] == "ServiceAccount"]
        assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == \
            "showwork@acme-ml-42.iam.gserviceaccount.com"
        run = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("showwork-run-"))
        assert run["data"]["SHOWWORK_ROOT"] == "gs://acme-bus/runs"
        (js,) = [d for d in docs if d["kind"] == "JobSet"]
        for rj in js["spec"]["replicatedJobs"]:
            pod = rj["template"]["spec"]["template"]["spec"]
            image = pod["containers"][0]["image"]
            assert image.startswith("europe-docker.pkg.dev/acme-ml-42/showwork/showwork-") and image.endswith(":0.1.0")
            for volume in pod.get("volumes", []):
                if "csi" in volume:
                    assert volume["csi"]["volumeAttributes"]["bucketName"] == "acme-models"
        recipes = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("showwork-recipes"))
        paths = [line for text in recipes["data"].values() for line in text.splitlines() if "gs://" in line]
        assert paths and all("gs://acme-models/" in p or "gs://acme-bus/" in p or "gs://…" in p for p in paths), paths


def test_without_a_registry_the_images_keep_skaffolds_names(tmp_path):
    configure.main(["--project", "acme-ml-42", "--bucket", "acme-bus", "--out", str(tmp_path)])
    (js,) = [d for d in render(tmp_path / "hybrid-v5e-8") if d["kind"] == "JobSet"]
    images = {rj["template"]["spec"]["template"]["spec"]["containers"][0]["image"] for rj in js["spec"]["replicatedJobs"]}
    assert images == {f"showwork-{s}:0.1.0" for s in ("data-prep", "sft", "grpo-session", "eval")}


@pytest.mark.parametrize("flag, value", [
    ("--project", "PROJECT_ID"), ("--project", "Acme"), ("--bucket", "showwork-runs"), ("--bucket", "a"),
    ("--registry", "https://example.com/x"), ("--tag", "no spaces"),
])
def test_placeholders_and_invalid_names_are_refused(tmp_path, flag, value):
    args = {"--project": "acme-ml-42", "--bucket": "acme-bus", "--out": str(tmp_path), flag: value}
    with pytest.raises(SystemExit, match="is not a valid"):
        configure.main([x for kv in args.items() for x in kv])
    assert not any(tmp_path.iterdir())


def test_a_shipped_gke_overlay_as_is_still_carries_the_placeholders_configure_replaces():
    """What configure guards against: applying a shipped GKE overlay directly leaves PROJECT_ID."""
    text = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s" / "overlays" / "hybrid-v5e-8")],
                          capture_output=True, text=True, check=True).stdout
    assert "PROJECT_ID" in configure.leftovers(text)
