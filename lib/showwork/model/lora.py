"""LoRA and QLoRA adapters through qwix: apply, fold into the base weights, merge for export."""

from __future__ import annotations

import contextlib
import hashlib
import threading

import jax
import jax.numpy as jnp
import numpy as np
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
    # A starts at zero here and is drawn in `_create_adapters` (why there: its docstring).
    provider = qwix.LoraProvider(module_path=targets, rank=rank, alpha=alpha,
                                 lora_a_initializer=jax.nn.initializers.zeros, **kwargs)
    example = _example_inputs(model)
    rngs = nnx.Rngs(seed)
    adapted = qwix.apply_lora_to_model(model, provider, rngs=rngs, skip_nnx_init=True, **example)
    _create_adapters(adapted, rngs, example, seed)
    return adapted


def _create_adapters(adapted: nnx.Module, rngs: nnx.Rngs, example: dict, seed: int) -> None:
    """qwix's first forward pass, which creates the adapters, as one small compiled program; then A drawn.

    qwix runs the pass eagerly: one XLA program per operation of the model
    (141 for the tiny model, about 10 s of compiling on a CPU, in every stage
    that adds adapters). Compiled whole, it costs more than that on a deep
    model: the forward (whose result nobody reads) and, worse, one threefry
    draw per adapter, each a separate piece of code for XLA (the 270M's 108
    adapters: about 20 s). So the pass returns nothing (XLA drops the forward),
    qwix creates A as zeros (no draw to compile), and A is drawn on the host
    (`draw_a`) and placed as its sharding annotation says.
    """
    def create(model, ex) -> None:  # returns nothing: XLA drops the forward, the adapters come back as state
        model(**ex)

    adapted.set_attributes(qwix_rngs=rngs, disable_quant_stats_update=True)
    with _quiet_tracer_attribute_errors():
        nnx.jit(create)(adapted, example)
    adapted.set_attributes(qwix_rngs=None, disable_quant_stats_update=False)
    # Eagerly created adapters take their sharding annotation's layout; the compiled pass returns them
    # laid out as XLA chose. Placed as the annotation says, the train step sees the same layout before
    # and after an update, and compiles once.
    mesh = meshes.mesh_of(adapted)
    state = nnx.state(adapted, nnx.LoRAParam)
    specs = dict(nnx.to_flat_state(nnx.get_partition_spec(state)))
    flat = [(path, var) for path, var in nnx.to_flat_state(state) if str(path[-1]).endswith("_lora_a")]
    drawn = draw_a({path: (var.get_value().shape, var.get_value().dtype) for path, var in flat}, seed)
    for path, var in flat:  # every host drew the same A: each places its own devices' blocks
        sharding = None if mesh is None else jax.sharding.NamedSharding(mesh, specs[path].get_value())
        var.set_value(meshes.from_host(drawn[path], sharding))
    nnx.update(adapted, state)
    if mesh is not None:
        meshes.shard(adapted, mesh, nnx.LoRAParam)  # B, as the pass returned it


@contextlib.contextmanager
def _quiet_tracer_attribute_errors():
    """Tracing the pass: qwix and flax ask each traced weight for `.sharding` with getattr(x, "sharding",
    None). A tracer has none and raises AttributeError, and jax writes into that error's message where
    the tracer came from by walking every equation traced so far; getattr then drops the error unread.
    On the 270M that walk, repeated for each of its hundreds of variables, is most of the pass's cost
    (it grows with the square of the model's depth). Within the pass the message says less; the error
    is the same.
    """
    from jax._src.interpreters import partial_eval

    tracer = getattr(partial_eval, "DynamicJaxprTracer", None)
    with _QUIET:  # one pass at a time: each restores what it found
        original = getattr(tracer, "_origin_msg", None)
        if original is None:  # another jax: nothing to quiet
            yield
            return
        tracer._origin_msg = lambda self: ""
        try:
            yield
        finally:
            tracer._origin_msg = original


_QUIET = threading.Lock()


def draw_a(shapes: dict[tuple, tuple], seed: int) -> dict[tuple, np.ndarray]:
    """Each adapter's A (path -> (shape, dtype)) drawn as qwix's default initializer draws it, He uniform:
    uniform in ±sqrt(6 / fan_in), fan_in the product of all but the last dimension (jax's
    `he_uniform()` for these shapes). Each from its own generator, seeded by the recipe's seed and the
    adapter's path: the same values on every host, mesh and run, independent across adapters.
    """
    out = {}
    for path, (shape, dtype) in shapes.items():
        digest = hashlib.sha256("/".join(map(str, path)).encode()).digest()
        generator = np.random.default_rng([seed % 2**64, *np.frombuffer(digest, np.uint32).tolist()])
        bound = np.sqrt(6.0 / np.prod(shape[:-1]))
        out[path] = generator.uniform(-bound, bound, shape).astype(jnp.dtype(dtype))
    return out


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
