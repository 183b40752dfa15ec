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
