"""Export: a model as a Hugging Face directory (model.safetensors, config.json,
tokenizer.model), on local disk or on the bus, laid out by its family's adapter."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from showwork.bus import Bus
from showwork.errors import RunError
from showwork.model import families
from showwork.model.loaded import Loaded


class NonFiniteWeights(RunError):
    """A model with NaN or infinite weights: never exported, so never marked done."""


def export_hf(loaded: Loaded, out_dir: Path) -> Path:
    """Write `loaded` (LoRA already merged) as a Hugging Face directory of its family.

    Refuses (NonFiniteWeights) a model with any non-finite weight.
    """
    family = families.for_config(loaded.config)
    tensors = family.hf_tensors(loaded.model, loaded.config)
    bad = [name for name, t in tensors.items() if not np.isfinite(t).all()]
    if bad:
        raise NonFiniteWeights(f"refusing to export {loaded.name}: {len(bad)} of {len(tensors)} weight tensors hold "
                               f"NaN or infinite values (first: {', '.join(bad[:3])})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(family.config_json(loaded.config), indent=1))
    (out_dir / "tokenizer.model").write_bytes(loaded.tokenizer.sp.serialized_model_proto())
    return out_dir


def to_bus(bus: Bus, key_prefix: str, loaded: Loaded) -> list[str]:
    """Write the model as a Hugging Face directory under `key_prefix` on the bus; returns its keys."""
    with tempfile.TemporaryDirectory(prefix="showwork-export-") as tmp:
        export_hf(loaded, Path(tmp))
        keys = []
        for path in sorted(Path(tmp).iterdir()):
            key = f"{key_prefix}/{path.name}"
            bus.write_bytes(key, path.read_bytes())
            keys.append(key)
    return keys
