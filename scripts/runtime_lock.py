"""Print the runtime lock: the pins of the dev lock that `showwork[cpu]` needs at run time.

Walks the installed distributions' Requires-Dist (markers evaluated for this platform) from
showwork's runtime dependencies and the `cpu` extra, so the images install no test or lint tool.
Usage (in the venv `make lock` resolved): python scripts/runtime_lock.py lib/requirements-dev.lock
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def needs(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": e}) for e in (extras or {""}))


def closure(root: str, extras: set[str]) -> set[str]:
    """Canonical names of every distribution `root[extras]` needs, itself excluded."""
    seen: set[str] = set()
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if not needs(req, wanted):
                continue
            key = canonicalize_name(req.name)
            if (key, frozenset(req.extras)) in seen:
                continue
            seen.add((key, frozenset(req.extras)))
            todo.append((req.name, set(req.extras)))
    return {key for key, _ in seen}


def main(dev_lock: str) -> None:
    pins = {}
    for line in open(dev_lock, encoding="utf-8"):
        line = line.strip()
        if line and not line.startswith("#"):
            pins[canonicalize_name(line.split("==")[0])] = line
    names = closure("showwork", {"cpu"})
    missing = sorted(names - set(pins))
    if missing:
        sys.exit(f"not in {dev_lock}: {missing}")
    print("# Runtime lock: what the images install (scripts/runtime_lock.py from requirements-dev.lock).")
    for name in sorted(names):
        print(pins[name])


if __name__ == "__main__":
    main(sys.argv[1])
