"""From a config and a state to run specs, and from each logged state to frames.

This is the writer half of the pytree front, shared by the local and the
remote writer: it runs the views, checks every frame against the schema the
first state fixed, and takes host copies of the leaves inside ``log()``.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from trajstore.config import WriterGroupConfig
from trajstore.errors import FrameMismatchError, SchemaError, StepOrderError
from trajstore.frequency import frequency_to_json
from trajstore.pytree import describe, leaf_specs, start_host_copies, to_host
from trajstore.schema import GroupSpec, LeafSpec, RunSpec, check_total_steps, metadata_to_json
from trajstore.store.layout import MAX_FRAMES
from trajstore.store.naming import group_names, group_paths

__all__ = ["Frame", "GroupWriters", "extract_frames", "frames_per_group", "prepare_groups"]

#: One frame ready to write: (group position, time index, host leaves).
Frame = tuple[int, int, tuple[np.ndarray, ...]]


def _is_group(node: object) -> bool:
    return isinstance(node, WriterGroupConfig)


@dataclass(frozen=True)
class GroupWriters(WriterGroupConfig[Any, Any]):
    """A configured group bound to its schema, ready to extract frames.

    Attributes:
        position: Position of the group in the run (config-leaf order).
        spec: The group's schema, fixed by the initial state.
        extract: The view as called at every log (compiled unless
            ``compile_views=False``).
        treedef: Structure every extracted value must have.
        owned: Whether extracted JAX leaves are fresh buffers nobody else
            holds (compiled views); otherwise they are copied.
        sources: Per leaf of the view's value, the position of the state's
            leaf that the (compiled) view returns unchanged, or ``None`` where
            it computes something: a leaf with a source is a plain selection,
            which :class:`~trajstore.extraction.FrameExtractor` copies from
            the state without running XLA. Empty for uncompiled views.
    """

    position: int = field(default=0, kw_only=True)
    spec: GroupSpec = field(default=None, kw_only=True)  # type: ignore[assignment]
    extract: Callable[[Any], Any] = field(default=None, kw_only=True)  # type: ignore[assignment]
    treedef: Any = field(default=None, kw_only=True)
    owned: bool = field(default=True, kw_only=True)
    sources: tuple[int | None, ...] = field(default=(), kw_only=True)
    _checks: tuple[tuple[tuple[int, ...], np.dtype[Any]], ...] = field(
        default=(), kw_only=True, repr=False
    )

    def time_index(self, step: int) -> int:
        """Time index of ``step``'s frame (0 for a group without time axis)."""
        index = self.logging_frequency.dataset_index(step)
        if index is Ellipsis:
            return 0
        try:
            value = operator.index(index)
        except TypeError:
            raise SchemaError(
                f"{self.spec.name}: dataset_index({step}) returned {index!r}; need an int or ..."
            ) from None
        if not 0 <= value < MAX_FRAMES:
            raise StepOrderError(
                f"{self.spec.name}: step {step} would be frame {value}; a group holds frames "
                f"0 to {MAX_FRAMES - 1}"
            )
        return value

    def leaves_of(self, state: Any) -> list[Any]:
        """Run the view on ``state``; check the result against the schema."""
        leaves, treedef = jax.tree_util.tree_flatten(self.extract(state))
        if treedef != self.treedef:
            raise FrameMismatchError(
                f"{self.spec.name}: the view returned structure {treedef}, "
                f"the run was created with {self.treedef}"
            )
        for leaf, spec, (shape, dtype) in zip(leaves, self.spec.leaves, self._checks, strict=True):
            leaf_dtype = getattr(leaf, "dtype", None)
            if np.shape(leaf) != shape or leaf_dtype is None or not _same_dtype(leaf_dtype, dtype):
                got = f"{leaf_dtype}{list(np.shape(leaf))}" if leaf_dtype else type(leaf).__name__
                raise FrameMismatchError(
                    f"{self.spec.name} leaf {spec.path or '<root>'}: expected "
                    f"{spec.dtype}{list(shape)}, got {got}"
                )
        return leaves


def _same_dtype(got: Any, stored: np.dtype[Any]) -> bool:
    """Whether a leaf of dtype ``got`` stores as ``stored`` (either byte order)."""
    dtype = np.dtype(got)
    return bool(dtype == stored or (dtype.byteorder == ">" and dtype.newbyteorder("<") == stored))


def prepare_groups(
    config: Any,
    initial_state: Any,
    total_steps: int | None,
    *,
    compile_views: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[list[GroupWriters], RunSpec]:
    """Bind every group of ``config`` to the schema ``initial_state`` gives it."""
    check_total_steps(total_steps)
    paths_and_configs, _ = jax.tree_util.tree_flatten_with_path(config, is_leaf=_is_group)
    if not paths_and_configs:
        raise SchemaError("the config has no WriterGroupConfig")
    groups: list[GroupWriters] = []
    for position, (path, group_config) in enumerate(paths_and_configs):
        name = "group" + jax.tree_util.keystr(path)
        if not isinstance(group_config, WriterGroupConfig):
            raise SchemaError(
                f"config leaf {name} is a {type(group_config).__name__}; every leaf of the "
                f"config must be a WriterGroupConfig"
            )
        if "/" in name:
            raise SchemaError(f"group name {name} contains '/', which HDF5 names cannot hold")
        frequency = group_config.logging_frequency
        leading = tuple(frequency.leading_shape(total_steps if total_steps is not None else 1))
        if len(leading) > 1:
            raise SchemaError(f"{name}: time axes of more than one dimension are not supported")
        extract: Callable[[Any], Any] = group_config.view
        if compile_views:
            # Checked as the view returns it: compiled, Python scalars, lists and
            # strings would turn into arrays (or fail) without a clear error.
            leaf_specs(group_config.view(initial_state))
            extract = jax.jit(group_config.view)
        sample = extract(initial_state)
        specs = with_units(tuple(leaf_specs(sample)), group_config.units, name)
        sources = selected_sources(group_config.view, initial_state, specs) if compile_views else ()
        spec = GroupSpec(
            name=name,
            time_axis=bool(leading),
            leaves=specs,
            structure=describe(sample),
            frequency=frequency_to_json(frequency),
            compression=group_config.compression,
        )
        groups.append(
            GroupWriters(
                group_config.view,
                frequency,
                compression=group_config.compression,
                position=position,
                spec=spec,
                extract=extract,
                treedef=jax.tree_util.tree_structure(sample),
                owned=compile_views,
                sources=sources,
                _checks=tuple((leaf.shape, leaf.np_dtype) for leaf in spec.leaves),
            )
        )
    run = RunSpec(
        groups=tuple(g.spec for g in groups),
        config_structure=describe(config, is_leaf=_is_group),
        metadata_json=metadata_to_json(metadata),
        total_steps=total_steps,
    )
    return groups, run


def with_units(
    specs: tuple[LeafSpec, ...], units: str | Mapping[str, str] | None, group: str
) -> tuple[LeafSpec, ...]:
    """``specs`` with the units a :class:`WriterGroupConfig` gives its leaves.

    Raises:
        SchemaError: One string for a group of several leaves, or a key that
            names no leaf.
    """
    if units is None:
        return specs
    if isinstance(units, str):
        if len(specs) != 1:
            raise SchemaError(
                f"{group}: units={units!r} fits a view of one array; this one returns "
                f"{len(specs)} leaves: give a mapping from leaf path to units"
            )
        return (dataclasses.replace(specs[0], units=units),)
    path = group_paths([group], 2)[0]
    plain = group_names(path, [s.path for s in specs], [s.shape for s in specs], 2).datasets
    by_key = {
        key: i
        for i, (spec, name) in enumerate(zip(specs, plain, strict=True))
        for key in (spec.path, name)
    }
    chosen = dict.fromkeys(range(len(specs)), "")
    for key, text in units.items():
        if key not in by_key:
            raise SchemaError(
                f"{group}: units for {key!r}, which is no leaf; leaves: {', '.join(plain)}"
            )
        chosen[by_key[key]] = text
    return tuple(dataclasses.replace(spec, units=chosen[i]) for i, spec in enumerate(specs))


def selected_sources(
    view: Callable[[Any], Any], initial_state: Any, specs: tuple[LeafSpec, ...]
) -> tuple[int | None, ...]:
    """Per leaf of ``view``'s value, the state leaf it passes on unchanged (else ``None``).

    Read from the view's jaxpr: an output variable that is an input variable
    is a plain selection. Only leaves that already are arrays of the stored
    shape and dtype count (a float64 numpy leaf that the compiled view turns
    into float32, or a Python scalar, is computed, not selected).
    """
    in_leaves = jax.tree_util.tree_leaves(initial_state)
    jaxpr = jax.make_jaxpr(view)(initial_state).jaxpr
    if len(jaxpr.invars) != len(in_leaves) or len(jaxpr.outvars) != len(specs):
        return (None,) * len(specs)
    sources: list[int | None] = []
    for var, spec in zip(jaxpr.outvars, specs, strict=True):
        source = next((i for i, v in enumerate(jaxpr.invars) if v is var), None)
        if source is not None:
            leaf = in_leaves[source]
            if not (
                isinstance(leaf, (jax.Array, np.ndarray, np.generic))
                and leaf.shape == spec.shape
                and leaf.dtype == spec.np_dtype
            ):
                source = None
        sources.append(source)
    return tuple(sources)


def extract_frames(groups: list[GroupWriters], state: Any, step: int) -> list[Frame]:
    """Every frame due at ``step``, as host copies taken now; one view call per group.

    Views run and are checked for all groups before any copy, so a bad frame
    raises before anything of this step is queued.
    """
    due = [g for g in groups if g.logging_frequency.should_log(step)]
    if not due:
        return []
    return frames_per_group(due, [g.time_index(step) for g in due], state)


def frames_per_group(due: list[GroupWriters], indices: list[int], state: Any) -> list[Frame]:
    """The frames of the ``due`` groups at time ``indices``: each view run and checked alone."""
    extracted = [(g, index, g.leaves_of(state)) for g, index in zip(due, indices, strict=True)]
    for _, _, leaves in extracted:
        start_host_copies(leaves)
    return [
        # A tuple of arrays, which the garbage collector stops tracking at its
        # first pass: frames wait in buffers by the thousand (BENCHMARKS.md, item 24).
        (g.position, index, tuple([to_host(leaf, owned=g.owned) for leaf in leaves]))
        for g, index, leaves in extracted
    ]
