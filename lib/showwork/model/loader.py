"""Loading a model by name: the tunix nnx module, its tokenizer and its config.

* `gemma3-270m`  real weights from the packaged GGUF (or `path` to a .gguf),
                 converted once into a cached safetensors directory.
* `gemma3-1b-it`, `gemma3-1b-pt`, `gemma2-2b-it`
                 a Hugging Face safetensors directory (`path`), local or
                 gs://, staged beforehand; we never reach a hub at run time.
* `tiny`         random weights and a small trained tokenizer, for fast tests.

What differs between Gemma 3 and Gemma 2 lives in `showwork.model.families`.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

from showwork.config import ModelConfig
from showwork.model import cache, families, gguf, tiny
from showwork.model.loaded import DTYPES, Loaded, with_remat
from showwork.model.tokenizer import Tokenizer

MODEL_NAMES = typing.get_args(typing.get_type_hints(ModelConfig)["name"])

def load(name: str, path: str | None = None, dtype: str = "float32", mesh=None, seed: int = 0,
         remat: bool = False) -> Loaded:
    """Load a model by name; `path` overrides where its weights come from; `remat` see with_remat."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    jdtype = DTYPES[dtype]
    if name == "tiny":
        return tiny.load(dtype=dtype, seed=seed, mesh=mesh, remat=remat)
    family = families.for_model_name(name)
    if name == "gemma3-270m":
        gguf_path = Path(path) if path else gguf.default_gguf_path()
        if not gguf_path.exists():
            raise FileNotFoundError(f"GGUF weights for {name} not found at {gguf_path}")
        directory = gguf.cached_conversion(gguf_path, cache.cache_dir() / "gguf")
        config = families.gemma3_config(json.loads((directory / "hparams.json").read_text()), jdtype)
    else:
        if not path:
            raise ValueError(
                f"model {name} needs model.path: a directory with its Hugging Face "
                "safetensors and tokenizer.model (stage it to the bus once; pods have no hub access)"
            )
        directory = Path(cache.local_dir(path))
        if not directory.is_dir():
            raise FileNotFoundError(f"model directory for {name} not found: {directory}")
        config = family.config_from_hf(families.read_config_json(directory), jdtype)
    config = with_remat(config, remat)
    if not any(directory.glob("*.safetensors")):
        raise FileNotFoundError(f"no *.safetensors files in {directory} for model {name}")
    tokenizer = Tokenizer.from_file(directory / "tokenizer.model")
    model = family.load_safetensors(directory, config, jdtype, mesh)
    return Loaded(name=name, model=model, tokenizer=tokenizer, config=config)


def load_dir(directory: str, dtype: str = "float32", mesh=None, remat: bool = False) -> Loaded:
    """Load an exported (Hugging Face layout) directory; its config.json names the family."""
    path = Path(directory)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no exported model at {directory} (config.json missing)")
    family = families.for_config_json(families.read_config_json(path))
    loaded = load(family.hf_model_name, path=str(path), dtype=dtype, mesh=mesh, remat=remat)
    loaded.name = str(directory)
    return loaded


def load_from(bus, key: str | None, model: ModelConfig, dtype: str, mesh=None, seed: int = 0,
              remat: bool = False) -> Loaded:
    """The recipe's base model (`key` None) or the model a stage exported at `key` on the bus."""
    if key is None:
        return load(model.name, model.path, dtype, mesh=mesh, seed=seed, remat=remat)
    if not bus.exists(f"{key}/config.json"):
        raise FileNotFoundError(f"model {bus.uri(key)} is not on the bus yet (run its stage first)")
    return load_dir(cache.local_dir(bus.uri(key)), dtype, mesh=mesh, remat=remat)
