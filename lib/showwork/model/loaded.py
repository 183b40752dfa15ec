"""A loaded model (module, tokenizer, tunix config) and the settings every loader shares."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
from flax import nnx

from showwork.model.tokenizer import Tokenizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclass
class Loaded:
    """A model ready to use: module, tokenizer, the tunix config it was built from."""

    name: str
    model: nnx.Module
    tokenizer: Tokenizer
    config: Any  # tunix ModelConfig (gemma3 or gemma)


def with_remat(config, remat: bool):
    """Recompute each attention and MLP block in the backward pass instead of keeping its activations.

    tunix's `RematConfig.BLOCK`: each block's forward pass runs again in the
    backward pass, so only block inputs are stored (cost measured in
    docs/BENCHMARKS.md). Inference is unaffected.
    """
    if not remat:
        return config
    return dataclasses.replace(config, remat_config=type(config.remat_config).BLOCK)


def remat_of(model: nnx.Module):
    """The tunix RematConfig a built model runs with (None for a model without one)."""
    return getattr(getattr(model, "config", None), "remat_config", None)


def set_remat(model: nnx.Module, remat) -> nnx.Module:
    """Switch a built tunix model's RematConfig in place (`remat`: a RematConfig member).

    tunix reads it at call time, from each layer's `config` and from each
    attention module's own `remat_config` (copied at construction), so every
    module holding either gets the new value; modules sharing one config keep
    sharing one copy. LoRA needs this: qwix creates the adapters during a
    first forward pass, which must run without remat (see lora.add).
    """
    copies = {}
    for _, module in nnx.iter_modules(model):
        if "remat_config" in vars(module):
            module.remat_config = remat
        config = vars(module).get("config")
        if config is not None and hasattr(config, "remat_config"):
            if id(config) not in copies:
                copies[id(config)] = dataclasses.replace(config, remat_config=remat)
            module.config = copies[id(config)]
    return model
