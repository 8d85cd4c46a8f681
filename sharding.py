"""The one module that knows the device mesh: mesh from config, logical-axis rules, shardings."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from errors import ConfigError
from models import logical
from schema import field, require

MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension is split over every mesh axis that holds a copy of the computation; the
# tensor axis instead splits the work inside each layer (attention heads, MLP hidden units).
BATCH_AXES = ("data", "fsdp")

# Logical parameter axis names (declared by models/) -> mesh axis, used when fsdp > 1. Names are
# tried in order; a mesh axis is used once per parameter, and a dimension the axis size does not
# divide stays unsharded, so every parameter gets the largest shardable layout the rules allow.
FSDP_RULES: tuple[tuple[str, str], ...] = (
    ("conv_out", "fsdp"),
    ("mlp", "fsdp"),
    ("heads", "fsdp"),
    ("embed", "fsdp"),
    ("conv_in", "fsdp"),
    ("classes", "fsdp"),
)
# Megatron-style tensor parallelism (Shoeybi et al. 2019): query/key/value and MLP-in kernels are
# split by columns ('heads' / 'mlp' output dims), attention-out and MLP-out kernels by rows (the
# same names on their input dims), so each device computes its heads / hidden units end to end.
# Tried before the FSDP rules, which then shard the other dimension over 'fsdp'.
TENSOR_RULES: tuple[tuple[str, str], ...] = (
    ("heads", "tensor"),
    ("mlp", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """`config.mesh`: sizes of the mesh axes; -1 means "all devices not used by the others"."""

    data: int = field(-1, "Data-parallel axis size; -1 takes all devices left over.")
    fsdp: int = field(1, "Parameter-sharding axis size (1 = parameters replicated).")
    tensor: int = field(1, "Tensor-parallel axis: attention heads and MLP units split over it.")
    rules: str = field(
        "",
        "Logical parameter axis -> mesh axis, 'name=axis,...' tried in order; '' = sharding.py's "
        "defaults (heads/mlp -> tensor, then conv_out/mlp/heads/embed/conv_in/classes -> fsdp).",
    )
    sequence_parallel: bool = field(
        False,
        "Also split the transformer residual stream by tokens over 'tensor' (less activation "
        "memory per device when mesh.tensor > 1; no effect otherwise).",
    )

    def validate(self) -> None:
        """Each axis a positive size or -1 (at most one -1); rules well formed."""
        for name in MESH_AXES:
            size = getattr(self, name)
            require(size == -1 or size >= 1, f"mesh.{name}", size, "must be a positive size or -1.")
        fill = [f"mesh.{name}" for name in MESH_AXES if getattr(self, name) == -1]
        if len(fill) > 1:
            given = " and ".join(f"{name}=-1" for name in fill)
            raise ConfigError(f"{given}: at most one mesh axis may be -1 (the rest).")
        parse_rules(self.rules)

    def axis_sizes(self, num_devices: int) -> dict[str, int]:
        """Resolves -1; ConfigError naming the sizes unless their product is the device count."""
        self.validate()
        sizes = {name: getattr(self, name) for name in MESH_AXES}
        given = ", ".join(f"mesh.{name}={size}" for name, size in sizes.items())
        fill = [name for name, size in sizes.items() if size == -1]
        known = int(np.prod([s for s in sizes.values() if s != -1]))
        if fill:
            if num_devices % known:
                raise ConfigError(
                    f"{given}: the fixed axes use {known} devices, which does not divide the "
                    f"{num_devices} devices; allowed: sizes whose product divides {num_devices}."
                )
            sizes[fill[0]] = num_devices // known
        if int(np.prod(list(sizes.values()))) != num_devices:
            raise ConfigError(
                f"{given} multiply to {int(np.prod(list(sizes.values())))}, but there are "
                f"{num_devices} devices; set one axis to -1 or make them match."
            )
        return sizes


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ('data', 'fsdp', 'tensor') mesh over all global devices, following the topology."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = config.axis_sizes(len(devices))
    shape = tuple(sizes[name] for name in MESH_AXES)
    try:
        device_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except (AssertionError, NotImplementedError, ValueError):
        # CPU and odd slices have no topology to follow: a plain reshape is as good as any.
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def num_batch_shards(mesh: Mesh) -> int:
    """How many ways the batch dimension is split."""
    return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def logical_to_mesh_spec(
    logical: PartitionSpec | None,
    shape: tuple[int, ...],
    mesh: Mesh,
    rules: Sequence[tuple[str, str]],
) -> PartitionSpec:
    """Maps a parameter's logical axis names to mesh axes under `rules` (see FSDP_RULES)."""
    if logical is None or not rules:
        return PartitionSpec()
    names = tuple(logical) + (None,) * (len(shape) - len(tuple(logical)))
    spec: list[str | None] = [None] * len(shape)
    used: set[str] = set()
    for logical_name, mesh_axis in rules:
        if mesh_axis in used or mesh.shape.get(mesh_axis, 1) == 1:
            continue
        for dim, name in enumerate(names):
            if (
                name == logical_name
                and spec[dim] is None
                and shape[dim] % mesh.shape[mesh_axis] == 0
            ):
                spec[dim] = mesh_axis
                used.add(mesh_axis)
                break
    return PartitionSpec(*spec)


def param_shardings(abstract_params, logical_specs, mesh: Mesh, rules: Sequence[tuple[str, str]]):
    """NamedShardings for a parameter tree, from its shapes and its logical PartitionSpecs."""
    return jax.tree.map(
        lambda leaf, logical: NamedSharding(
            mesh, logical_to_mesh_spec(logical, tuple(leaf.shape), mesh, rules)
        ),
        abstract_params,
        logical_specs,
        is_leaf=lambda x: x is None,
    )


def parse_rules(text: str) -> tuple[tuple[str, str], ...]:
    """'heads=tensor,embed=fsdp' -> (('heads', 'tensor'), ('embed', 'fsdp')); names `mesh.rules`."""
    rules = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        logical, _, axis = part.partition("=")
        if not logical.strip() or axis.strip() not in MESH_AXES:
            raise ConfigError(
                f"mesh.rules={text!r}: {part!r} must be logical_name=mesh_axis with the axis "
                f"one of {', '.join(MESH_AXES)}."
            )
        rules.append((logical.strip(), axis.strip()))
    return tuple(rules)


def rules_for(mesh: Mesh, override: str = "") -> tuple[tuple[str, str], ...]:
    """The logical-axis rules of this mesh: `override` (config `mesh.rules`) if given, else tensor
    rules then FSDP rules; only rules whose mesh axis has size > 1 are kept."""
    rules = parse_rules(override) if override else TENSOR_RULES + FSDP_RULES
    return tuple((name, axis) for name, axis in rules if mesh.shape.get(axis, 1) > 1)


def shard_like_params(tree, params_sharding, params_structure, mesh: Mesh):
    """Shardings for an optimizer-state tree: subtrees shaped like the params get theirs."""

    def assign(subtree):
        if jax.tree.structure(subtree) == params_structure:
            return params_sharding
        return jax.tree.map(lambda _: replicated(mesh), subtree)

    return jax.tree.map(assign, tree, is_leaf=lambda x: jax.tree.structure(x) == params_structure)


def put_host_tree(tree, shardings):
    """Host (numpy) arrays every process holds whole -> global arrays laid out as `shardings`
    (each device takes its own slice; works across processes)."""

    def put(host, target):
        host = np.asarray(host)
        return jax.make_array_from_callback(host.shape, target, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's part of the batch into global arrays sharded on the batch axes."""
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()
    }


def activation_rules(sequence_parallel: bool = False) -> dict[str, tuple[str, ...]]:
    """Logical activation axis (models/logical.py) -> the mesh axes that split it.

    The batch follows the batch axes; under tensor parallelism each device keeps its own heads
    and MLP units between the column- and row-split kernels (Shoeybi et al. 2019). With
    `sequence_parallel` the residual stream between those layers is split by tokens over
    'tensor' too (Korthikanti et al. 2022, sec. 4.2.2), so layer norms, residual adds and the
    activations kept for the backward pass are not repeated on every tensor device.
    """
    rules = {"batch": BATCH_AXES, "heads": ("tensor",), "mlp": ("tensor",)}
    if sequence_parallel:
        rules["length"] = ("tensor",)
    return rules


def activation_spec(
    shape: tuple[int, ...],
    names: tuple[str | None, ...],
    mesh: Mesh,
    rules: dict[str, tuple[str, ...]],
) -> PartitionSpec:
    """The layout the rules ask for; a dimension they do not split (unnamed, no rule, or not
    divisible by its axes) is left UNCONSTRAINED for XLA to choose, never forced replicated."""
    spec: list = []
    used: set[str] = set()
    for size, name in zip(shape, names, strict=True):
        axes = tuple(
            axis for axis in rules.get(name, ()) if mesh.shape[axis] > 1 and axis not in used
        )
        split = int(np.prod([mesh.shape[axis] for axis in axes]))
        if axes and size % split == 0:
            spec.append(axes if len(axes) > 1 else axes[0])
            used.update(axes)
        else:
            spec.append(PartitionSpec.UNCONSTRAINED)
    return PartitionSpec(*spec)


def activation_constraints(mesh: Mesh, sequence_parallel: bool = False):
    """A context in which the models' `logical.constrain` marks become sharding constraints
    on `mesh` (enter it inside the traced function: it acts while jit traces)."""
    rules = activation_rules(sequence_parallel)

    def resolve(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
        spec = activation_spec(tuple(x.shape), names, mesh, rules)
        if all(axis is PartitionSpec.UNCONSTRAINED for axis in spec):
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    def whole_elsewhere(shape, names) -> PartitionSpec:  # the rules' split; other axes whole
        spec = activation_spec(tuple(shape), names, mesh, rules)
        return PartitionSpec(*(None if a is PartitionSpec.UNCONSTRAINED else a for a in spec))

    def per_device(fn, in_names, out_names):
        def mapped(*args):
            in_specs = tuple(
                None if a is None else whole_elsewhere(a.shape, names)
                for a, names in zip(args, in_names, strict=True)
            )
            out_specs = whole_elsewhere(jax.eval_shape(fn, *args).shape, out_names)
            # check_vma=False: Pallas kernels carry no varying-manual-axes rule.
            return jax.shard_map(
                fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
            )(*args)

        return mapped

    split_counts = {
        name: int(np.prod([mesh.shape[axis] for axis in axes])) for name, axes in rules.items()
    }
    return logical.resolving(resolve, split_counts, per_device)
