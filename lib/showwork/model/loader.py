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

from showwork.errors import UsageError
from showwork import log
from showwork.config import ModelConfig
from showwork import cache
from showwork.model import families, gguf, tiny
from showwork.model.loaded import DTYPES, Loaded, with_remat
from showwork.model.tokenizer import Tokenizer

MODEL_NAMES = typing.get_args(typing.get_type_hints(ModelConfig)["name"])

def load(name: str, path: str | None = None, dtype: str = "float32", mesh=None, seed: int = 0,
         remat: bool = False) -> Loaded:
    """Load a model by name; `path` overrides where its weights come from; `remat` see with_remat.

    Any name takes any weight form: a `.gguf` file (Gemma 3, converted once),
    a Hugging Face directory, or a model a stage exported (local or gs://).
    A directory's config.json decides the family; where it disagrees with
    the name, it wins, with a warning.
    """
    if name not in MODEL_NAMES:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    if remat:
        _warn_remat_on_cpu()
    if name == "tiny" and path is None:
        return tiny.load(dtype=dtype, seed=seed, mesh=mesh, remat=remat)
    if path is None and name == "gemma3-270m":
        path = str(gguf.default_gguf_path())
    if not path:
        raise UsageError(f"model {name} needs model.path: a directory with its Hugging Face safetensors and "
                         "tokenizer.model, a .gguf, or an exported model (stage it to the bus once; pods have no "
                         "hub access)")
    loaded = _load_path(str(path), DTYPES[dtype], mesh, remat)
    named = families.for_model_name(name)
    if families.for_config(loaded.config) is not named:
        log.get("showwork").warning("model.name and the weights' config.json name different families; "
                                    "loading the weights' family", name=name, path=str(path),
                                    family=families.for_config(loaded.config).model_type)
    loaded.name = name
    return loaded


def _warn_remat_on_cpu():
    """XLA:CPU drops the optimization barriers remat places around each block's recomputation, so the
    recomputation merges back into the forward pass and its activations stay alive: little memory
    saved for more time (docs/BENCHMARKS.md). Say so where the user asked for it."""
    import jax

    if jax.default_backend() == "cpu":
        log.get("showwork").warning(
            "tier.remat saves little memory on CPU: XLA:CPU merges remat's recomputation back into the forward "
            "pass; sft.gradient_accumulation or grpo.micro_batch split a step into smaller passes instead")


def _load_path(path: str, jdtype, mesh, remat: bool) -> Loaded:
    """The model at a .gguf file or a Hugging Face directory (local or gs://), named by its path."""
    if path.endswith(".gguf"):
        if not Path(path).is_file():
            raise FileNotFoundError(f"GGUF weights not found at {path}")
        directory = gguf.cached_conversion(Path(path), cache.cache_dir() / "gguf")
        family = families.FAMILIES["gemma3"]  # the GGUF reader knows Gemma 3 only (it checks)
        config = families.gemma3_config(json.loads((directory / "hparams.json").read_text()), jdtype)
    else:
        directory = Path(cache.local_dir(path))
        if not directory.is_dir():
            raise FileNotFoundError(f"model directory not found: {directory}")
        hf = families.read_config_json(directory)
        family = families.for_config_json(hf)
        config = family.config_from_hf(hf, jdtype)
    config = with_remat(config, remat)
    if not any(directory.glob("*.safetensors")):
        raise FileNotFoundError(f"no *.safetensors files in {directory}")
    tokenizer = Tokenizer.from_file(directory / "tokenizer.model")
    model = family.load_safetensors(directory, config, jdtype, mesh)
    return Loaded(name=path, model=model, tokenizer=tokenizer, config=config)


def load_dir(directory: str, dtype: str = "float32", mesh=None, remat: bool = False) -> Loaded:
    """Load an exported (Hugging Face layout) directory; its config.json names the family."""
    if not (Path(directory) / "config.json").exists() and not str(directory).startswith("gs://"):
        raise FileNotFoundError(f"no exported model at {directory} (config.json missing)")
    return _load_path(str(directory), DTYPES[dtype], mesh, remat)


def load_from(bus, key: str | None, model: ModelConfig, dtype: str, mesh=None, seed: int = 0,
              remat: bool = False) -> Loaded:
    """The recipe's base model (`key` None) or the model a stage exported at `key` on the bus."""
    if key is None:
        return load(model.name, model.path, dtype, mesh=mesh, seed=seed, remat=remat)
    if not bus.exists(f"{key}/config.json"):
        raise FileNotFoundError(f"model {bus.uri(key)} is not on the bus yet (run its stage first)")
    return load_dir(cache.local_dir(bus.uri(key)), dtype, mesh=mesh, remat=remat)
