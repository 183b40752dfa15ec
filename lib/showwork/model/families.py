"""One adapter per Gemma family: everything that differs between Gemma 3 and Gemma 2.

An adapter knows its family's Hugging Face `config.json` (read into a tunix
config, written back from one), its tunix safetensors loader, and the
inverse mapping from tunix parameter names and layouts to Hugging Face's,
so an export loads back through the same loader unchanged (tested for each
family). Adding a family is one adapter here and one entry in FAMILIES.

Both families tie the output projection to the embedding, so there is no
`lm_head`. Norm scales are stored as Hugging Face stores them (`w` in
`x * (1 + w)`), which is also tunix's layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from showwork.errors import UsageError
from showwork.model.meshes import host_array
from showwork.model.tokenizer import BOS_ID, EOS_ID, PAD_ID

# Hugging Face norm names <- ours, shared by both families except the
# post-attention norm, whose tunix name differs.
_MLP = ("gate_proj", "up_proj", "down_proj")


def read_config_json(directory: Path) -> dict:
    """A checkpoint's config.json (the text config of a multimodal Gemma 3)."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory} has no config.json (a Hugging Face checkpoint directory has one)")
    hf = json.loads(path.read_text())
    return hf.get("text_config", hf)


def _common(hf: dict) -> dict:
    return {
        "num_layers": hf["num_hidden_layers"],
        "num_embed": hf["vocab_size"],
        "embed_dim": hf["hidden_size"],
        "hidden_dim": hf["intermediate_size"],
        "num_heads": hf["num_attention_heads"],
        "head_dim": hf.get("head_dim", hf["hidden_size"] // hf["num_attention_heads"]),
        "num_kv_heads": hf["num_key_value_heads"],
        "sliding_window_size": hf.get("sliding_window"),
    }


def _common_json(config, dtype: str) -> dict:
    return {
        "num_hidden_layers": config.num_layers,
        "vocab_size": config.num_embed,
        "hidden_size": config.embed_dim,
        "intermediate_size": config.hidden_dim,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "sliding_window": config.sliding_window_size,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
        "torch_dtype": dtype,
    }


def _layer_types(hf: dict, count: int) -> list[str] | None:
    """`layer_types` as newer configs spell the attention pattern, or from `sliding_window_pattern`."""
    if hf.get("layer_types"):
        if len(hf["layer_types"]) != count:
            raise UsageError(f"layer_types names {len(hf['layer_types'])} layers, num_hidden_layers is {count}")
        return list(hf["layer_types"])
    every = hf.get("sliding_window_pattern")
    if every:
        return ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(count)]
    return None


def _rope(hf: dict, family: str, kind: str, theta: float) -> tuple[float, float]:
    """(base frequency, linear scale factor) of the RoPE that `kind` layers use.

    transformers 5 writes `rope_parameters` (per layer kind for Gemma 3, one
    dict for Gemma 2) instead of the `rope_theta` / `rope_local_base_freq` /
    `rope_scaling` of earlier releases and of the published checkpoints; both
    are read. tunix implements plain and linearly scaled RoPE only.
    """
    params = hf.get("rope_parameters")
    if params:
        rope = (params.get(kind) if family == "gemma3" else params) or {}
    elif kind == "sliding_attention" and family == "gemma3":
        rope = {"rope_theta": hf.get("rope_local_base_freq", theta)}
    else:
        rope = {**(hf.get("rope_scaling") or {}), "rope_theta": hf.get("rope_theta", theta)}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise UsageError(f"{kind} RoPE type {rope_type!r}: tunix's {family} implements only default and linear RoPE")
    factor = float(rope.get("factor", 1.0)) if rope_type == "linear" else 1.0
    return float(rope.get("rope_theta", theta)), factor


def _attention_tensors(attn: dict, config) -> dict:
    """q/k/v/o projections as Hugging Face [out, in] matrices, from tunix's einsum weights."""
    d, n, h = config.embed_dim, config.num_heads, config.head_dim

    def heads_in(w):  # (heads, D, H) -> [heads*H, D]
        return host_array(w).transpose(0, 2, 1).reshape(-1, d)

    if "qkv_einsum" in attn:
        q, k, v = host_array(attn["qkv_einsum"]["w"])
    else:
        q = host_array(attn["q_einsum"]["w"])
        k, v = host_array(attn["kv_einsum"]["w"])
    return {"self_attn.q_proj.weight": heads_in(q), "self_attn.k_proj.weight": heads_in(k),
            "self_attn.v_proj.weight": heads_in(v),
            "self_attn.o_proj.weight": host_array(attn["attn_vec_einsum"]["w"]).reshape(n * h, d).T}


def _tensors(model: nnx.Module, config, post_attention: str, extra) -> dict[str, np.ndarray]:
    state = nnx.state(model, nnx.Param).to_pure_dict()
    out = {"model.embed_tokens.weight": host_array(state["embedder"]["input_embedding"]),
           "model.norm.weight": host_array(state["final_norm"]["scale"])}
    norms = (("pre_attention_norm", "input_layernorm"), (post_attention, "post_attention_layernorm"),
             ("pre_ffw_norm", "pre_feedforward_layernorm"), ("post_ffw_norm", "post_feedforward_layernorm"))
    for i, layer in state["layers"].items():
        p = f"model.layers.{i}."
        out.update({p + k: v for k, v in _attention_tensors(layer["attn"], config).items()})
        out.update({p + k: v for k, v in extra(layer).items()})
        for name in _MLP:
            out[p + f"mlp.{name}.weight"] = host_array(layer["mlp"][name]["kernel"]).T
        for ours, theirs in norms:
            out[p + f"{theirs}.weight"] = host_array(layer[ours]["scale"])
    return {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in out.items()}


class Gemma3:
    """Gemma 3 text models (270M, 1B, …): QK norm, 5 local : 1 global layers, two RoPE bases."""

    model_type = "gemma3_text"

    def config_from_hf(self, hf: dict, dtype) -> Any:
        from tunix.models.gemma3 import model as gemma3

        common = _common(hf)
        pattern = _layer_types(hf, common["num_layers"])
        fixed = ["full_attention" if t is gemma3.AttentionType.GLOBAL else "sliding_attention"
                 for t in gemma3.GEMMA3_ATTENTION_PATTERN]
        if pattern is not None and pattern != [fixed[i % len(fixed)] for i in range(len(pattern))]:
            raise UsageError(f"Gemma 3 layer pattern {pattern} is not tunix's fixed 5 local : 1 global pattern")
        local_theta, local_factor = _rope(hf, "gemma3", "sliding_attention", 10_000)
        global_theta, global_factor = _rope(hf, "gemma3", "full_attention", 1_000_000)
        return gemma3.ModelConfig(
            **common,
            local_base_frequency=int(local_theta),
            global_base_frequency=int(global_theta),
            local_scale_factor=local_factor,
            global_scale_factor=global_factor,
            query_pre_attn_norm=self._query_norm(hf, common),
            param_dtype=dtype,
        )

    @staticmethod
    def _query_norm(hf: dict, common: dict):
        from tunix.models.gemma3.model import QueryPreAttentionNormalisation as Q

        scalar = hf.get("query_pre_attn_scalar", common["head_dim"])
        if scalar == common["head_dim"]:
            return Q.BY_ONE_OVER_SQRT_HEAD_DIM
        if scalar == common["embed_dim"] // common["num_heads"]:
            return Q.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS
        raise UsageError(f"query_pre_attn_scalar {scalar} is neither head_dim nor hidden_size / heads: "
                         "tunix's Gemma 3 cannot scale queries that way")

    def config_json(self, config, dtype: str = "float32") -> dict:
        from tunix.models.gemma3 import model as gemma3

        Q = gemma3.QueryPreAttentionNormalisation
        scalar = (config.head_dim if config.query_pre_attn_norm == Q.BY_ONE_OVER_SQRT_HEAD_DIM
                  else config.embed_dim // config.num_heads)
        out = {"architectures": ["Gemma3ForCausalLM"], "model_type": self.model_type, **_common_json(config, dtype),
               "rope_theta": float(config.global_base_frequency),
               "rope_local_base_freq": float(config.local_base_frequency),
               "rope_scaling": _linear(config.global_scale_factor),
               # transformers 5's spelling; the only one that holds a local scale factor.
               "rope_parameters": {
                   "full_attention": {"rope_theta": float(config.global_base_frequency),
                                      **(_linear(config.global_scale_factor) or {"rope_type": "default"})},
                   "sliding_attention": {"rope_theta": float(config.local_base_frequency),
                                         **(_linear(config.local_scale_factor) or {"rope_type": "default"})}},
               "query_pre_attn_scalar": scalar,
               "sliding_window_pattern": len(gemma3.GEMMA3_ATTENTION_PATTERN),
               "final_logit_softcapping": None, "attn_logit_softcapping": None}
        out["layer_types"] = _layer_types(out, config.num_layers)
        return out

    def load_safetensors(self, directory: Path, config, dtype, mesh) -> nnx.Module:
        from tunix.models.gemma3 import params_safetensors

        return params_safetensors.create_model_from_safe_tensors(str(directory), config, mesh=mesh, dtype=dtype)

    def hf_tensors(self, model: nnx.Module, config) -> dict[str, np.ndarray]:
        def qk_norms(layer):
            return {"self_attn.q_norm.weight": host_array(layer["attn"]["_query_norm"]["scale"]),
                    "self_attn.k_norm.weight": host_array(layer["attn"]["_key_norm"]["scale"])}

        return _tensors(model, config, "post_attention_norm", qk_norms)


def _linear(factor: float) -> dict | None:
    return {"rope_type": "linear", "factor": float(factor)} if factor != 1.0 else None


def gemma3_config(hparams: dict, dtype) -> Any:
    """A Gemma 3 tunix config from the hyper-parameters a GGUF file records (270M) or a test gives."""
    return Gemma3().config_from_hf({
        "num_hidden_layers": hparams["num_layers"], "vocab_size": hparams["num_embed"],
        "hidden_size": hparams["embed_dim"], "intermediate_size": hparams["hidden_dim"],
        "num_attention_heads": hparams["num_heads"], "head_dim": hparams["head_dim"],
        "num_key_value_heads": hparams["num_kv_heads"], "sliding_window": hparams["sliding_window_size"],
        "rope_local_base_freq": 10_000, "rope_theta": 1_000_000}, dtype)


class Gemma2:
    """Gemma 2 (2B, …): no QK norm, logit soft-capping, alternating local and global layers."""

    model_type = "gemma2"

    def config_from_hf(self, hf: dict, dtype) -> Any:
        from tunix.models.gemma import model as gemma

        common = _common(hf)
        scalar = hf.get("query_pre_attn_scalar", common["head_dim"])
        if scalar != common["head_dim"]:
            raise UsageError(f"query_pre_attn_scalar {scalar} differs from head_dim {common['head_dim']}: "
                             "tunix's Gemma 2 scales queries by head_dim only")
        theta, factor = _rope(hf, "gemma2", "full_attention", 10_000)
        if (theta, factor) != (10_000, 1.0):
            raise UsageError(f"RoPE base {theta} and scale {factor}: tunix's Gemma 2 uses base 10000 unscaled only")
        kinds = {"sliding_attention": gemma.AttentionType.LOCAL_SLIDING, "full_attention": gemma.AttentionType.GLOBAL}
        pattern = _layer_types(hf, common["num_layers"]) or [
            ("sliding_attention", "full_attention")[i % 2] for i in range(common["num_layers"])]
        if unknown := sorted(set(pattern) - set(kinds)):
            raise UsageError(f"layer_types {unknown}: tunix's Gemma 2 knows {', '.join(kinds)}")
        return gemma.ModelConfig(
            **common,
            final_logit_softcap=hf.get("final_logit_softcapping"),
            attn_logits_soft_cap=hf.get("attn_logit_softcapping"),
            use_post_attn_norm=True,
            use_post_ffw_norm=True,
            attention_types=tuple(kinds[t] for t in pattern),
        )

    def config_json(self, config, dtype: str = "float32") -> dict:
        from tunix.models.gemma import model as gemma

        names = {gemma.AttentionType.LOCAL_SLIDING: "sliding_attention", gemma.AttentionType.GLOBAL: "full_attention"}
        return {"architectures": ["Gemma2ForCausalLM"], "model_type": self.model_type, **_common_json(config, dtype),
                "rope_theta": 10_000.0,
                "query_pre_attn_scalar": config.head_dim,
                "final_logit_softcapping": config.final_logit_softcap,
                "attn_logit_softcapping": config.attn_logits_soft_cap,
                "layer_types": [names[t] for t in config.attention_types],
                "cache_implementation": "hybrid"}

    def load_safetensors(self, directory: Path, config, dtype, mesh) -> nnx.Module:
        from tunix.models.gemma import params_safetensors

        return params_safetensors.create_model_from_safe_tensors(str(directory), config, mesh=mesh, dtype=dtype)

    def hf_tensors(self, model: nnx.Module, config) -> dict[str, np.ndarray]:
        return _tensors(model, config, "post_attn_norm", lambda layer: {})


FAMILIES = {"gemma3": Gemma3(), "gemma2": Gemma2()}


def for_model_name(name: str):
    """The adapter of a recipe's `model.name` (gemma3-…, gemma2-…; `tiny` is a Gemma 3)."""
    for prefix, family in FAMILIES.items():
        if name.startswith(prefix):
            return family
    if name == "tiny":
        return FAMILIES["gemma3"]
    raise UsageError(f"model {name!r} belongs to no known family ({', '.join(FAMILIES)})")


def for_config_json(hf: dict):
    """The adapter whose Hugging Face `model_type` a config.json names."""
    kind = hf.get("model_type")
    for family in FAMILIES.values():
        if kind == family.model_type or (kind == "gemma3" and family.model_type == "gemma3_text"):
            return family
    raise UsageError(f"config.json names model_type {kind!r}; known: "
                     + ", ".join(f.model_type for f in FAMILIES.values()))


def for_config(config):
    """The adapter of a tunix config object (what a loaded model carries)."""
    from tunix.models.gemma import model as gemma

    return FAMILIES["gemma2"] if isinstance(config, gemma.ModelConfig) else FAMILIES["gemma3"]


def final_softcap(config) -> float | None:
    """The soft cap on the output logits (Gemma 2), None where the family has none (Gemma 3)."""
    return getattr(config, "final_logit_softcap", None) if for_config(config) is FAMILIES["gemma2"] else None
