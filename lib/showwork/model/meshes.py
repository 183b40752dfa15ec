"""Device meshes from a tier's `mesh:` section, and placing a model's weights on one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


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


def shard(model: nnx.Module, mesh: jax.sharding.Mesh, *filters) -> nnx.Module:
    """Place every parameter (of `filters`' kinds, when given) as its sharding annotation says (FSDP/TP).

    The safetensors loader already does this; a model built in memory (the
    tiny one) carries the annotations but is created replicated.
    """
    state = nnx.state(model, *filters)
    specs = nnx.get_partition_spec(state)
    placed = jax.tree.map(lambda x, spec: jax.device_put(x, jax.sharding.NamedSharding(mesh, spec)), state, specs)
    nnx.update(model, placed)
    return model


def mesh_of(model: nnx.Module) -> jax.sharding.Mesh | None:
    """The mesh `model`'s parameters are placed on, or None when they are not on one."""
    found = {leaf.sharding.mesh for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))
             if isinstance(getattr(leaf, "sharding", None), jax.sharding.NamedSharding)}
    if len(found) > 1:
        raise ValueError(f"the model's parameters are spread over {len(found)} different meshes")
    return found.pop() if found else None


def sharded_params(model: nnx.Module) -> int:
    """How many parameter arrays are split across devices (not replicated)."""
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return sum(1 for x in leaves if hasattr(x, "sharding") and not x.sharding.is_fully_replicated)


def from_host(host: np.ndarray, sharding: jax.sharding.Sharding | None) -> jax.Array:
    """A host array placed with `sharding` (on the default device when None): each device takes its
    block, no program runs, and on a slice of several hosts each supplies its own devices' blocks (every
    host must hold the same values)."""
    if sharding is None:
        return jnp.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def host_array(x) -> np.ndarray:
    """A (possibly multi-host sharded) array as one numpy array on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
