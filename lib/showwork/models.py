"""Models: the only module that knows weights, tokenizers, meshes and LoRA.

Every model is a tunix nnx module plus a SentencePiece tokenizer:

* `gemma3-270m`  real weights from the packaged GGUF (or `path` to a .gguf),
                 converted once into a cached safetensors directory.
* `gemma3-1b-it`, `gemma3-1b-pt`, `gemma2-2b-it`
                 a Hugging Face safetensors directory (`path`), staged to the
                 bus or a local disk beforehand; we never reach a hub at run time.
* `tiny`         random weights and a small trained tokenizer, for fast tests.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from showwork import gguf_weights
from showwork.prompts import END_OF_TURN, START_OF_TURN

MODEL_NAMES = ("gemma3-270m", "gemma3-1b-it", "gemma3-1b-pt", "gemma2-2b-it", "tiny")

BOS_ID, EOS_ID, PAD_ID = 2, 1, 0

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def cache_dir() -> Path:
    """Where converted weights live; SHOWWORK_CACHE moves it (read-only images)."""
    root = os.environ.get("SHOWWORK_CACHE") or Path.home() / ".cache" / "showwork"
    return Path(root)


class Tokenizer:
    """SentencePiece with Gemma's ids and chat markers.

    A thin wrapper: tunix's samplers accept the underlying processor
    (`.sp`), our code uses the methods below.
    """

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.end_of_turn_id = self.sp.piece_to_id(END_OF_TURN)
        self.start_of_turn_id = self.sp.piece_to_id(START_OF_TURN)
        if (self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()) != (BOS_ID, EOS_ID, PAD_ID):
            raise ValueError(
                "tokenizer must use Gemma ids bos=2 eos=1 pad=0, got "
                f"bos={self.sp.bos_id()} eos={self.sp.eos_id()} pad={self.sp.pad_id()}"
            )

    @classmethod
    def from_file(cls, path: Path) -> "Tokenizer":
        if not path.exists():
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        return cls(path.read_bytes())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return [BOS_ID, *ids] if bos else ids

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))

    def ids_starting_with(self, text: str) -> list[int]:
        """Ids of every piece that begins with `text` (e.g. `>`, `>.`, `>,`)."""
        if not hasattr(self, "_pieces"):
            self._pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        return [i for i, piece in enumerate(self._pieces) if piece.startswith(text)]


@dataclass
class Loaded:
    """A model ready to use: module, tokenizer, the tunix config it was built from."""

    name: str
    model: nnx.Module
    tokenizer: Tokenizer
    config: Any  # tunix ModelConfig (gemma3 or gemma)


def make_mesh(shape: tuple[int, ...], axis_names: tuple[str, ...]) -> jax.sharding.Mesh:
    """A device mesh from the tier config.

    Axis types must be Auto: tunix's gathers fail under explicit sharding.
    """
    if len(shape) != len(axis_names):
        raise ValueError(f"mesh shape {shape} and axis names {axis_names} differ in length")
    needed = int(np.prod(shape))
    devices = jax.devices()
    if needed > len(devices):
        raise ValueError(
            f"mesh {dict(zip(axis_names, shape))} needs {needed} devices, "
            f"only {len(devices)} {devices[0].platform} device(s) are visible"
        )
    return jax.make_mesh(
        shape,
        axis_names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
        devices=devices[:needed],
    )


def tier_mesh(mesh_config) -> jax.sharding.Mesh:
    """The mesh a tier's `mesh:` section describes (shape and axis names)."""
    return make_mesh(tuple(mesh_config.shape), tuple(mesh_config.axes))


def shard(model: nnx.Module, mesh: jax.sharding.Mesh) -> nnx.Module:
    """Place every parameter as its tunix sharding annotation says (FSDP/TP).

    The safetensors loader already does this; a model built in memory (the
    tiny one) carries the annotations but is created replicated.
    """
    state = nnx.state(model)
    specs = nnx.get_partition_spec(state)
    placed = jax.tree.map(lambda x, spec: jax.device_put(x, jax.sharding.NamedSharding(mesh, spec)), state, specs)
    nnx.update(model, placed)
    return model


def sharded_params(model: nnx.Module) -> int:
    """How many parameter arrays are split across devices (not replicated)."""
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return sum(1 for x in leaves if hasattr(x, "sharding") and not x.sharding.is_fully_replicated)


def host_array(x) -> np.ndarray:
    """A (possibly multi-host sharded) array as one numpy array on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _gemma3_config(hparams: dict, dtype) -> Any:
    from tunix.models.gemma3 import model as gemma3

    return gemma3.ModelConfig(
        num_layers=hparams["num_layers"],
        num_embed=hparams["num_embed"],
        embed_dim=hparams["embed_dim"],
        hidden_dim=hparams["hidden_dim"],
        num_heads=hparams["num_heads"],
        head_dim=hparams["head_dim"],
        num_kv_heads=hparams["num_kv_heads"],
        sliding_window_size=hparams["sliding_window_size"],
        local_base_frequency=10_000,
        global_base_frequency=1_000_000,
        param_dtype=dtype,
    )


def _hf_config(name: str, directory: Path, dtype) -> Any:
    """The tunix config for a Hugging Face checkpoint, read from its config.json.

    Reading the checkpoint's own config (rather than assuming the published
    size) lets the same code load any Gemma 3 / Gemma 2 size and our tests'
    small synthetic checkpoints.
    """
    path = directory / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory} has no config.json (a Hugging Face checkpoint directory has one)")
    hf = json.loads(path.read_text())
    hf = hf.get("text_config", hf)  # multimodal Gemma 3 nests the text config
    common = {
        "num_layers": hf["num_hidden_layers"],
        "num_embed": hf["vocab_size"],
        "embed_dim": hf["hidden_size"],
        "hidden_dim": hf["intermediate_size"],
        "num_heads": hf["num_attention_heads"],
        "head_dim": hf.get("head_dim", hf["hidden_size"] // hf["num_attention_heads"]),
        "num_kv_heads": hf["num_key_value_heads"],
        "sliding_window_size": hf.get("sliding_window"),
    }
    if name.startswith("gemma3"):
        from tunix.models.gemma3 import model as gemma3

        scaling = hf.get("rope_scaling") or {}
        return gemma3.ModelConfig(
            **common,
            local_base_frequency=int(hf.get("rope_local_base_freq", 10_000)),
            global_base_frequency=int(hf.get("rope_theta", 1_000_000)),
            global_scale_factor=float(scaling.get("factor", 1.0)),
            param_dtype=dtype,
        )
    from tunix.models.gemma import model as gemma

    kinds = (gemma.AttentionType.LOCAL_SLIDING, gemma.AttentionType.GLOBAL)
    return gemma.ModelConfig(
        **common,
        final_logit_softcap=hf.get("final_logit_softcapping"),
        attn_logits_soft_cap=hf.get("attn_logit_softcapping"),
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        attention_types=tuple(kinds[i % 2] for i in range(hf["num_hidden_layers"])),
    )


def _load_safetensors_dir(name: str, directory: Path, config, dtype, mesh):
    if not any(directory.glob("*.safetensors")):
        raise FileNotFoundError(f"no *.safetensors files in {directory} for model {name}")
    if name.startswith("gemma2"):
        from tunix.models.gemma import params_safetensors as loader
    else:
        from tunix.models.gemma3 import params_safetensors as loader
    return loader.create_model_from_safe_tensors(str(directory), config, mesh=mesh, dtype=dtype)


def _with_remat(config, remat: bool):
    """Recompute each attention and MLP block in the backward pass instead of keeping its activations.

    tunix's `RematConfig.BLOCK`: each block's forward pass runs again in the
    backward pass, so only block inputs are stored (cost measured in
    docs/BENCHMARKS.md). Inference is unaffected.
    """
    if not remat:
        return config
    return dataclasses.replace(config, remat_config=type(config.remat_config).BLOCK)


def load(name: str, path: str | None = None, dtype: str = "float32", mesh=None, seed: int = 0,
         remat: bool = False) -> Loaded:
    """Load a model by name; `path` overrides where its weights come from; `remat` see _with_remat."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    jdtype = _DTYPES[dtype]
    if name == "tiny":
        return tiny(dtype=dtype, seed=seed, mesh=mesh, remat=remat)
    if name == "gemma3-270m":
        gguf_path = Path(path) if path else gguf_weights.default_gguf_path()
        if not gguf_path.exists():
            raise FileNotFoundError(f"GGUF weights for {name} not found at {gguf_path}")
        directory = gguf_weights.cached_conversion(gguf_path, cache_dir() / "gguf")
        hparams = json.loads((directory / "hparams.json").read_text())
        config = _gemma3_config(hparams, jdtype)
    else:
        if not path:
            raise ValueError(
                f"model {name} needs model.path: a directory with its Hugging Face "
                "safetensors and tokenizer.model (stage it to the bus once; pods have no hub access)"
            )
        directory = Path(_local_copy(path))
        if not directory.is_dir():
            raise FileNotFoundError(f"model directory for {name} not found: {directory}")
        config = _hf_config(name, directory, jdtype)
    config = _with_remat(config, remat)
    tokenizer = Tokenizer.from_file(directory / "tokenizer.model")
    model = _load_safetensors_dir(name, directory, config, jdtype, mesh)
    return Loaded(name=name, model=model, tokenizer=tokenizer, config=config)


def load_dir(directory: str, dtype: str = "float32", mesh=None, remat: bool = False) -> Loaded:
    """Load an exported (Hugging Face layout) directory; its config.json names the family."""
    path = Path(directory)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no exported model at {directory} (config.json missing)")
    family = "gemma2-2b-it" if json.loads((path / "config.json").read_text()).get("model_type") == "gemma2" else "gemma3-1b-it"
    loaded = load(family, path=str(path), dtype=dtype, mesh=mesh, remat=remat)
    loaded.name = str(directory)
    return loaded


def _local_copy(path: str) -> str:
    """A gs:// model directory staged into the local cache (pods never reach a hub)."""
    if not path.startswith("gs://"):
        return path
    import hashlib

    from showwork.bus import Bus

    bus = Bus(path)
    target = cache_dir() / "staged" / hashlib.sha256(path.encode() + bus.read_bytes("config.json")).hexdigest()[:16]
    if not (target / ".complete").exists():
        target.mkdir(parents=True, exist_ok=True)
        for key in bus.list(""):
            (target / key).parent.mkdir(parents=True, exist_ok=True)
            (target / key).write_bytes(bus.read_bytes(key))
        (target / ".complete").write_text(path)
    return str(target)


# ---------------------------------------------------------------- tiny model

_TINY_CORPUS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "Betty is saving money for a new wallet which costs $100. The answer is 5.",
    "Let's solve this step by step: 1. First, 48 / 2 = 24. 2. Then 48 + 24 = 72.",
    "<reasoning>She sold 48 + 24 = 72 clips.</reasoning><answer>72</answer>",
    "Therefore the total is 10,800 dollars, or 3/4 of the price, minus 5.0 percent.",
)


def tiny_tokenizer() -> Tokenizer:
    """A 512-piece BPE tokenizer with Gemma's special ids, trained on a fixed text."""
    path = cache_dir() / "tiny" / "tokenizer-v1.model"
    if not path.exists():
        import io

        import sentencepiece as spm

        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_TINY_CORPUS * 20),
            model_writer=buf,
            model_type="bpe",
            vocab_size=512,
            byte_fallback=True,
            split_digits=True,
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=3,
            pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
            user_defined_symbols=[START_OF_TURN, END_OF_TURN, "<reasoning>", "</reasoning>", "<answer>", "</answer>"],
            hard_vocab_limit=False,
            num_threads=1,
            minloglevel=2,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)
    return Tokenizer.from_file(path)


def tiny_config(vocab: int, dtype=jnp.float32):
    return _gemma3_config(
        {
            "num_layers": 2,
            "num_embed": vocab,
            "embed_dim": 64,
            "hidden_dim": 128,
            "num_heads": 2,
            "head_dim": 32,
            "num_kv_heads": 1,
            "sliding_window_size": 64,
        },
        dtype,
    )


def tiny(dtype: str = "float32", seed: int = 0, mesh=None, remat: bool = False) -> Loaded:
    tokenizer = tiny_tokenizer()
    config = _with_remat(tiny_config(tokenizer.vocab_size, _DTYPES[dtype]), remat)
    ctx = jax.set_mesh(mesh) if mesh is not None else _null()
    with ctx:
        model = random_gemma3(config, seed)
    if mesh is not None:
        shard(model, mesh)
    return Loaded(name="tiny", model=model, tokenizer=tokenizer, config=config)


def random_gemma3(config, seed: int = 0) -> nnx.Module:
    """A Gemma 3 of `config` with random weights (tests, smoke runs)."""
    from tunix.models.gemma3 import model as gemma3

    model = gemma3.Gemma3(config, rngs=nnx.Rngs(params=seed))
    # tunix initialises MLP kernels to zero; a model that ignores its MLP
    # would make tests of training blind, so give every weight some noise.
    key = jax.random.key(seed + 1)
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        leaf if leaf.ndim == 1 else leaf + 0.02 * jax.random.normal(k, leaf.shape, leaf.dtype)
        for leaf, k in zip(leaves, keys)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))
    return model


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------- LoRA

DEFAULT_LORA_TARGETS = ".*q_einsum|.*kv_einsum|.*qkv_einsum|.*attn_vec_einsum|.*gate_proj|.*up_proj|.*down_proj"


def apply_lora(model: nnx.Module, rank: int, alpha: float, targets: str = DEFAULT_LORA_TARGETS,
               quantize: str | None = None, seed: int = 0) -> nnx.Module:
    """Wrap `model` with qwix LoRA adapters (QLoRA when `quantize` names a weight dtype).

    qwix initialises B to zero, so the adapted model starts equal to the base.
    """
    import qwix

    kwargs = {}
    if quantize:
        kwargs = {"weight_qtype": quantize, "tile_size": None}
    provider = qwix.LoraProvider(module_path=targets, rank=rank, alpha=alpha, **kwargs)
    example = _example_inputs(model)
    return qwix.apply_lora_to_model(model, provider, rngs=nnx.Rngs(seed), **example)


def _example_inputs(model) -> dict:
    tokens = jnp.ones((1, 1), dtype=jnp.int32)
    return {
        "last_tokens": tokens,
        "positions": jnp.zeros((1, 1), dtype=jnp.int32),
        "cache": None,
        "attention_mask": jnp.ones((1, 1, 1), dtype=jnp.bool_),
    }


# ---------------------------------------------------------------- scoring

@functools.partial(nnx.jit, static_argnames=())
def _forward(model, tokens, positions, mask):
    logits, _ = model(tokens, positions, None, mask)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def next_token_logprobs(loaded: Loaded, text: str) -> np.ndarray:
    """Log-probs of the token after `text` (BOS prepended), as a numpy vector."""
    ids = loaded.tokenizer.encode(text, bos=True)
    tokens = jnp.asarray([ids], dtype=jnp.int32)
    positions = jnp.arange(len(ids), dtype=jnp.int32)[None]
    causal = jnp.tril(jnp.ones((len(ids), len(ids)), dtype=jnp.bool_))[None]
    return np.asarray(_forward(loaded.model, tokens, positions, causal)[0, -1])


# ---------------------------------------------------------------- export


def hf_tensors(model: nnx.Module, config) -> dict[str, np.ndarray]:
    """A Gemma 3 tunix model's weights under Hugging Face names and layouts.

    The exact inverse of tunix's safetensors mapping, so an export loads back
    through `load` unchanged (tested), and into Hugging Face transformers.
    """
    state = nnx.state(model, nnx.Param).to_pure_dict()
    n, k, h, d = config.num_heads, config.num_kv_heads, config.head_dim, config.embed_dim

    def heads_in(w):  # (heads, D, H) -> [heads*H, D]
        return host_array(w).transpose(0, 2, 1).reshape(-1, d)

    out = {"model.embed_tokens.weight": host_array(state["embedder"]["input_embedding"]),
           "model.norm.weight": host_array(state["final_norm"]["scale"])}
    for i, layer in state["layers"].items():
        p = f"model.layers.{i}."
        attn = layer["attn"]
        if "qkv_einsum" in attn:
            q, kk, v = host_array(attn["qkv_einsum"]["w"])
        else:
            q = host_array(attn["q_einsum"]["w"])
            kk, v = host_array(attn["kv_einsum"]["w"])
        out[p + "self_attn.q_proj.weight"] = heads_in(q)
        out[p + "self_attn.k_proj.weight"] = heads_in(kk)
        out[p + "self_attn.v_proj.weight"] = heads_in(v)
        out[p + "self_attn.o_proj.weight"] = host_array(attn["attn_vec_einsum"]["w"]).reshape(n * h, d).T
        out[p + "self_attn.q_norm.weight"] = host_array(attn["_query_norm"]["scale"])
        out[p + "self_attn.k_norm.weight"] = host_array(attn["_key_norm"]["scale"])
        for ours, theirs in (("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("down_proj", "down_proj")):
            out[p + f"mlp.{theirs}.weight"] = host_array(layer["mlp"][ours]["kernel"]).T
        for ours, theirs in (("pre_attention_norm", "input_layernorm"), ("post_attention_norm", "post_attention_layernorm"),
                             ("pre_ffw_norm", "pre_feedforward_layernorm"), ("post_ffw_norm", "post_feedforward_layernorm")):
            out[p + f"{theirs}.weight"] = host_array(layer[ours]["scale"])
    del k
    return {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in out.items()}


def hf_config_json(config) -> dict:
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "num_hidden_layers": config.num_layers,
        "vocab_size": config.num_embed,
        "hidden_size": config.embed_dim,
        "intermediate_size": config.hidden_dim,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "sliding_window": config.sliding_window_size,
        "rope_theta": float(config.global_base_frequency),
        "rope_local_base_freq": float(config.local_base_frequency),
        "query_pre_attn_scalar": config.head_dim,
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
        "torch_dtype": "float32",
    }


def export_hf(loaded: Loaded, out_dir: Path) -> Path:
    """Write a Hugging Face style directory: model.safetensors, config.json, tokenizer.model."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(hf_tensors(loaded.model, loaded.config), str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(hf_config_json(loaded.config), indent=1))
    (out_dir / "tokenizer.model").write_bytes(loaded.tokenizer.sp.serialized_model_proto())
    return out_dir
