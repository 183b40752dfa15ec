"""A rendered overlay's documents: `kubectl kustomize` of an overlay (or a rendered YAML file) and its
one JobSet. Read by showwork.submit (one JobSet per stage) and showwork.deadlines."""

from __future__ import annotations


def jobset(docs: list[dict]) -> dict:
    """The one JobSet among a rendered overlay's documents."""
    found = [d for d in docs if d.get("kind") == "JobSet"]
    if len(found) != 1:
        raise ValueError(f"the rendered overlay has {len(found)} JobSets; a pipeline overlay has one")
    return found[0]


def rendered(overlay: str) -> list[dict]:
    """The documents of `kubectl kustomize` of an overlay directory, or of a rendered YAML file."""
    import pathlib
    import subprocess

    import yaml

    from showwork.errors import UsageError

    path = pathlib.Path(overlay)
    if path.is_dir():
        done = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
        if done.returncode:
            raise UsageError(f"kubectl kustomize {overlay}: {done.stderr.strip()}")
        text = done.stdout
    elif path.is_file():
        text = path.read_text()
    else:
        raise UsageError(f"{overlay}: neither an overlay directory nor a rendered YAML file")
    return [d for d in yaml.safe_load_all(text) if d]
