"""Rewrite the README's per-recipe tables of the systems they reproduce (showwork.systems).

Usage: python scripts/systems_readme.py README.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from showwork import config, systems

REPO = Path(__file__).resolve().parents[1]


def shipped() -> list:
    """Every shipped recipe that names a system, loaded with the cpu tier (the recipes set the batches
    the systems' derived values depend on, so every tier gives the same table)."""
    out = []
    for path in sorted((REPO / "k8s" / "base" / "recipes").glob("*.yaml")):
        cfg = config.load(path, REPO / "k8s" / "components" / "cpu" / "tier.yaml")
        if cfg.reference is not None:
            out.append(cfg)
    return out


if __name__ == "__main__":
    changed = systems.rewrite(Path(sys.argv[1]), shipped())
    print(f"{sys.argv[1]}: {'rewritten' if changed else 'up to date'}")
