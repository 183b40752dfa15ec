"""Export: a model as a Hugging Face directory (model.safetensors, config.json,
tokenizer.model), on local disk or on the bus, laid out by its family's adapter."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from showwork.bus import Bus
from showwork.errors import RunError
from showwork.model import families
from showwork.config import ModelConfig
from showwork.model.loaded import Loaded

# numpy dtypes of what we export (ml_dtypes gives numpy and safetensors a bfloat16).
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


class NonFiniteWeights(RunError):
    """A model with NaN or infinite weights: never exported, so never marked done."""


def export_hf(loaded: Loaded, out_dir: Path, dtype: str = "float32") -> Path:
    """Write `loaded` (LoRA already merged) as a Hugging Face directory of its family, weights in `dtype`.

    Refuses (NonFiniteWeights) a model with any non-finite weight.
    """
    family = families.for_config(loaded.config)
    tensors = {name: t.astype(DTYPES[dtype]) for name, t in family.hf_tensors(loaded.model, loaded.config).items()}
    bad = [name for name, t in tensors.items() if not np.isfinite(t).all()]
    if bad:
        raise NonFiniteWeights(f"refusing to export {loaded.name}: {len(bad)} of {len(tensors)} weight tensors hold "
                               f"NaN or infinite values (first: {', '.join(bad[:3])})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(family.config_json(loaded.config, dtype), indent=1))
    (out_dir / "tokenizer.model").write_bytes(loaded.tokenizer.sp.serialized_model_proto())
    return out_dir


def dtype_for(model: ModelConfig, tier_dtype: str) -> str:
    """The dtype a stage exports in (config.ModelConfig.export_dtype)."""
    return tier_dtype if model.export_dtype == "tier" else "float32"


def to_bus(bus: Bus, key_prefix: str, loaded: Loaded, dtype: str = "float32") -> list[str]:
    """Write the model as a Hugging Face directory under `key_prefix` on the bus; returns its keys."""
    with tempfile.TemporaryDirectory(prefix="showwork-export-") as tmp:
        export_hf(loaded, Path(tmp), dtype)
        keys = []
        for path in sorted(Path(tmp).iterdir()):
            key = f"{key_prefix}/{path.name}"
            bus.write_bytes(key, path.read_bytes())
            keys.append(key)
    return keys
