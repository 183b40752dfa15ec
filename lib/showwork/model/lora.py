"""LoRA and QLoRA adapters through qwix: apply, fold into the base weights, merge for export."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from showwork.config import LoraConfig
from showwork.model import meshes
from showwork.model.loaded import remat_of, set_remat

# The attention and MLP projections: the recipe's default (config.LoraConfig).
DEFAULT_TARGETS = LoraConfig.targets


def apply(model: nnx.Module, rank: int, alpha: float, targets: str = DEFAULT_TARGETS,
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
    rngs = nnx.Rngs(seed)
    adapted = qwix.apply_lora_to_model(model, provider, rngs=rngs, skip_nnx_init=True, **example)
    _create_adapters(adapted, rngs, example)
    return adapted


def _create_adapters(adapted: nnx.Module, rngs: nnx.Rngs, example: dict) -> None:
    """qwix's first forward pass, which creates the adapters, as one compiled program.

    qwix runs it eagerly: one small XLA program per operation of the model
    (141 for the tiny model, 10-20 s of compiling on a CPU before
    the first step, in every stage that adds adapters). Under nnx.jit the
    pass is one program and the adapters it creates come back as state.
    """
    adapted.set_attributes(qwix_rngs=rngs, disable_quant_stats_update=True)
    nnx.jit(lambda m, ex: m(**ex))(adapted, example)
    adapted.set_attributes(qwix_rngs=None, disable_quant_stats_update=False)
    # Eagerly created adapters take their sharding annotation's layout; the compiled pass returns them
    # laid out as XLA chose. Placed as the annotation says, the train step sees the same layout before
    # and after an update, and compiles once.
    mesh = meshes.mesh_of(adapted)
    if mesh is not None:
        meshes.shard(adapted, mesh, nnx.LoRAParam)


def _example_inputs(model) -> dict:
    tokens = jnp.ones((1, 1), dtype=jnp.int32)
    return {
        "last_tokens": tokens,
        "positions": jnp.zeros((1, 1), dtype=jnp.int32),
        "cache": None,
        "attention_mask": jnp.ones((1, 1, 1), dtype=jnp.bool_),
    }


def _lora_folds(model: nnx.Module) -> list[tuple[str, nnx.Module, str, jax.Array]]:
    """(module path, module, weight name, W + A·B·alpha/rank) for each LoRA-adapted weight.

    qwix stores `<w>_lora_a` / `<w>_lora_b` next to each adapted weight; for
    einsum weights it also records the einsum it used, from which we read
    how A and B contract back to the weight's layout.

    QLoRA: the frozen base is held quantised (a qwix QArray) and the adapters
    were trained against that quantised base, so they are folded into
    dequantise(Q(W)), the weight the trained model actually computed with,
    not into the original W (whose difference the adapters never saw).
    """
    import qwix
    from qwix._src.providers.ptq import WithAux  # qwix exports no public name for its weight wrapper

    folds = []
    for path, module in nnx.iter_modules(model):
        for name in list(vars(module)):
            if not name.endswith("_lora_a") or getattr(module, name) is None:
                continue
            base = name[: -len("_lora_a")]
            a = getattr(module, name).value
            b = getattr(module, base + "_lora_b").value
            weight = getattr(module, base)
            einsum_str = getattr(module, base + "_lora_einsum_str", None)
            if isinstance(weight, WithAux):
                current = qwix.dequantize(weight.array) if isinstance(weight.array, qwix.QArray) else weight.array
            else:
                current = weight.value
            if einsum_str:
                inputs = einsum_str.split("->")[0].split(",")
                rhs = module.einsum_str.split("->")[0].split(",")[1]
                delta = jnp.einsum(f"{inputs[1]},{inputs[2]}->{rhs}", a, b)
            else:
                delta = (a @ b).reshape(current.shape)
            folds.append((path, module, base, current + (_lora_scale(module, base) * delta).astype(current.dtype)))
    return folds


def merge(model: nnx.Module) -> nnx.Module:
    """Fold LoRA adapters into the base weights in place (W += A·B·alpha/rank), for export."""
    from qwix._src.providers.ptq import WithAux

    for _, module, base, merged in _lora_folds(model):
        weight = getattr(module, base)
        if isinstance(weight, WithAux):  # QLoRA: the export holds the plain folded weight
            setattr(module, base, nnx.Param(merged))
        else:
            weight.value = merged
        setattr(module, base + "_lora_a", None)
        setattr(module, base + "_lora_b", None)
    return model


def fold_into(base: nnx.Module, adapted: nnx.Module) -> nnx.Module:
    """`base`, the model `add` wrapped, with `adapted`'s current adapters folded into its weights.

    For sampling: one matmul per weight instead of the adapter's two extra
    skinny ones per projection per decoded token (the difference is measured
    in docs/BENCHMARKS.md). `base` keeps the arrays of the weights that have no adapter
    (the embedding, norms), shared with `adapted`, so the cost is one copy
    of the adapted weights.
    """
    modules = dict(nnx.iter_modules(base))
    for path, _, name, merged in _lora_folds(adapted):
        if path not in modules or not isinstance(getattr(modules[path], name, None), nnx.Param):
            raise ValueError(f"fold_into: the base model has no weight {name!r} at {path}; "
                             "pass the model that lora.add was given")
        getattr(modules[path], name).value = merged
    return base


def _lora_scale(module, base: str) -> float:
    scale = getattr(module, f"_showwork_{base}_lora_scale", None)
    if scale is None:
        raise ValueError("LoRA scale unknown: apply adapters with lora.add so export can merge them")
    return scale


def add(model: nnx.Module, lora: LoraConfig, seed: int = 0) -> nnx.Module:
    """`apply` with the recipe's LoRA section, recording alpha/rank on each adapted module for the merge.

    A model loaded with remat keeps it: qwix creates the adapters during one
    example forward pass, and creating variables inside nnx.remat's trace is
    not allowed, so that pass runs with remat off and remat is switched back
    on for training (the adapters then exist and are only read).
    """
    remat = remat_of(model)
    remats = remat is not None and remat.name != "NONE"
    if remats:
        set_remat(model, type(remat).NONE)
    adapted = apply(model, rank=lora.rank, alpha=lora.alpha, targets=lora.targets, quantize=lora.quantize, seed=seed)
    if remats:
        set_remat(model, remat)
        set_remat(adapted, remat)
    model = adapted
    for _, module in model.iter_modules():
        for name in list(vars(module)):
            if name.endswith("_lora_a"):
                setattr(module, f"_showwork_{name[:-len('_lora_a')]}_lora_scale", lora.alpha / lora.rank)
    return model
