"""Every frame due at a step from one pass over the state: selections, one compiled call.

Per-group extraction (:func:`~trajstore.groups.extract_frames`) dispatches one
compiled view per group and checks every value it returns. With JAX states
that is most of what ``log()`` costs (issue #18). :class:`FrameExtractor`
does the same work once per step:

- Leaves that a view returns unchanged (``lambda s: s.energy``; found in the
  view's jaxpr at ``__enter__``, :func:`~trajstore.groups.selected_sources`)
  are taken from the flattened state and copied to the host: no XLA call.
- What the due views compute runs as one function compiled ahead of time for
  the initial state's structure, shapes and dtypes (one per set of due
  groups, made at its first use). It accepts nothing else, so its outputs
  need no checks.
- Every device-to-host copy of the step starts before any is waited for.

A state that fits neither (another structure, a selected leaf of another
shape or dtype, arguments the compiled function refuses) goes through the
per-group path, which retraces and raises the same errors as before. So
every path writes the same frames, and a bad state fails the same way.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import numpy as np

from trajstore.frequency import EveryNStep
from trajstore.groups import Frame, GroupWriters, frames_per_group
from trajstore.store.layout import MAX_FRAMES

__all__ = ["EXTRACTIONS", "Extraction", "FrameExtractor"]

#: How views run: ``auto`` (selections without XLA, the rest in one compiled
#: call per step), ``fused`` (every view in one compiled call per step) or
#: ``per_group`` (one compiled call per group, every value checked).
Extraction = Literal["auto", "fused", "per_group"]
EXTRACTIONS: tuple[Extraction, ...] = ("auto", "fused", "per_group")


@dataclass(frozen=True)
class _StepPlan:
    """How to extract one set of due groups.

    Attributes:
        sources: State leaves that views select, copied as they are.
        avals: ``(shape, dtype)`` each of them must have for the plan to apply.
        compiled: What the due views compute, as one compiled call (if any).
        owned: Per compiled output, whether it is a fresh buffer (else copied).
        picks: Per due group, what takes its leaves (a tuple) from the
            selected leaves followed by the compiled outputs.
    """

    sources: tuple[int, ...]
    avals: list[tuple[tuple[int, ...], np.dtype[Any]]]
    compiled: Callable[[list[Any]], Sequence[Any]] | None
    owned: tuple[bool, ...]
    picks: tuple[Callable[[tuple[np.ndarray, ...]], tuple[np.ndarray, ...]], ...]


#: A set of due groups not planned yet (``None`` is one that has no plan).
_UNPLANNED: Any = object()


def _picker(
    positions: list[int],
) -> Callable[[tuple[np.ndarray, ...]], tuple[np.ndarray, ...]]:
    """What takes the leaves at ``positions`` from a tuple, as a tuple (a slice if it can)."""
    first = positions[0] if positions else 0
    if positions == list(range(first, first + len(positions))):
        return operator.itemgetter(slice(first, first + len(positions)))
    return operator.itemgetter(*positions)  # not a range: two or more, so a tuple


def _every_n(groups: list[GroupWriters]) -> tuple[tuple[int, ...], int] | None:
    """Each group's ``n`` if all log with :class:`EveryNStep`, and the first step past their frames.

    Their frame at a step is then ``step // n``; from that step on, one of them
    would pass :data:`MAX_FRAMES` and :meth:`GroupWriters.time_index` says so.
    """
    frequencies = [g.logging_frequency for g in groups]
    if not all(type(f) is EveryNStep for f in frequencies):
        return None
    every = tuple([f.n for f in frequencies])  # type: ignore[attr-defined]
    return every, MAX_FRAMES * min(every)


class _NoFastPathError(Exception):
    """The state does not fit the plan: extract per group."""


class FrameExtractor:
    """Extracts the frames due at each step (see the module docstring).

    Args:
        groups: The run's groups, from :func:`~trajstore.groups.prepare_groups`.
        initial_state: The state the groups were prepared with; its structure,
            shapes and dtypes are what the fast paths accept.
        compiled: Whether the views are compiled (``compile_views``); without,
            every step goes per group, as the views may need the host.
        mode: See :data:`Extraction`.
    """

    def __init__(
        self,
        groups: list[GroupWriters],
        initial_state: Any,
        *,
        compiled: bool = True,
        mode: Extraction = "auto",
    ) -> None:
        if mode not in EXTRACTIONS:
            raise ValueError(f"extraction must be one of {EXTRACTIONS}, got {mode!r}")
        self.groups = groups
        self.mode: Extraction = mode if compiled else "per_group"
        leaves, treedef = jax.tree_util.tree_flatten(initial_state)
        self._treedef: Any = treedef
        self._template: list[jax.ShapeDtypeStruct] = []
        if self.mode != "per_group":
            try:
                self._template = [_abstract(leaf) for leaf in leaves]
            except TypeError:  # a leaf JAX cannot take (the views never see it traced)
                self.mode = "per_group"
        # Starting an asynchronous copy costs microseconds and gains nothing
        # when the arrays are on the host already (JAX on CPU).
        self._async_copies = any(
            isinstance(leaf, jax.Array) and any(d.platform != "cpu" for d in leaf.devices())
            for leaf in leaves
        )
        self._plans: dict[tuple[int, ...], _StepPlan | None] = {}
        #: Each group's position with the bound test of its frequency (looked up once).
        self._schedule = [(g.position, g.logging_frequency.should_log) for g in groups]
        #: The groups at each set of due positions seen so far.
        self._due: dict[tuple[int, ...], list[GroupWriters]] = {}
        #: Per set of due positions, see :func:`_every_n`.
        self._every_n: dict[tuple[int, ...], tuple[tuple[int, ...], int] | None] = {}

    def frames(self, state: Any, step: int) -> list[Frame]:
        """Every frame due at ``step``, as host copies taken now.

        Raises before anything is taken: the per-group path's errors
        (:class:`~trajstore.errors.FrameMismatchError` for a value that does
        not match the run's schema, ...).
        """
        key = tuple([position for position, should_log in self._schedule if should_log(step)])
        if not key:
            return []
        due = self._due.get(key)
        if due is None:
            due = self._due[key] = [self.groups[position] for position in key]
            self._every_n[key] = _every_n(due)
        every_n = self._every_n[key]
        if every_n is not None and step < every_n[1]:
            indices = [step // n for n in every_n[0]]  # EveryNStep.dataset_index, inlined
        else:
            indices = [g.time_index(step) for g in due]
        if self.mode != "per_group":
            try:
                return self._fast(key, indices, state)
            except _NoFastPathError:
                pass
        return frames_per_group(due, indices, state)

    def _fast(self, key: tuple[int, ...], indices: list[int], state: Any) -> list[Frame]:
        """The frames of the groups at ``key`` (due now, at ``indices``) from ``state``."""
        leaves, treedef = jax.tree_util.tree_flatten(state)
        if treedef != self._treedef:
            raise _NoFastPathError
        plan = self._plans.get(key, _UNPLANNED)
        if plan is _UNPLANNED:
            plan = self._plan(key)
        if plan is None:
            raise _NoFastPathError
        picked = [leaves[i] for i in plan.sources]
        computed: Sequence[Any] = ()
        if self._async_copies:
            # Off the host: check with JAX's shapes and dtypes, then start every
            # copy of the step (the compiled call's outputs too) before any wait.
            try:
                if [(leaf.shape, leaf.dtype) for leaf in picked] != plan.avals:
                    raise _NoFastPathError
            except AttributeError:  # not an array: per group says why
                raise _NoFastPathError from None
            computed = self._call(plan, leaves)
            for leaf in (*picked, *computed):
                if isinstance(leaf, jax.Array):
                    leaf.copy_to_host_async()
        try:
            # Copies, not views: no view of the state's buffer is kept (it
            # would keep JAX from donating it). Their shape and dtype are cheap
            # to read (JAX's are not).
            hosts = [np.array(leaf) for leaf in picked]
        except Exception:  # not an array: per group says why
            raise _NoFastPathError from None
        if [(host.shape, host.dtype) for host in hosts] != plan.avals:
            raise _NoFastPathError
        if not self._async_copies:
            computed = self._call(plan, leaves)
        if computed:
            hosts.extend(
                [
                    np.asarray(leaf) if owned else np.array(leaf)
                    for leaf, owned in zip(computed, plan.owned, strict=True)
                ]
            )
        # Tuples of arrays, which the garbage collector stops tracking at its
        # first pass: frames wait in buffers by the thousand (BENCHMARKS.md, item 24).
        everything = tuple(hosts)
        return [
            (position, index, pick(everything))
            for position, index, pick in zip(key, indices, plan.picks, strict=True)
        ]

    @staticmethod
    def _call(plan: _StepPlan, leaves: list[Any]) -> Sequence[Any]:
        """The plan's compiled outputs for the state's ``leaves`` (none without a call)."""
        if plan.compiled is None:
            return ()
        try:
            return plan.compiled(leaves)
        except Exception:  # refused (other avals, placement): per group says why
            raise _NoFastPathError from None

    def _plan(self, key: tuple[int, ...]) -> _StepPlan | None:
        """The plan for the groups at ``key`` (made, and compiled, at its first use)."""
        sources: list[int] = []
        avals: list[tuple[tuple[int, ...], np.dtype[Any]]] = []
        wanted: list[tuple[GroupWriters, list[int]]] = []
        owned: list[bool] = []
        positions: list[list[tuple[bool, int]]] = []
        for group in (self.groups[position] for position in key):
            group_sources = group.sources or (None,) * len(group.spec.leaves)
            computed_here: list[int] = []
            places: list[tuple[bool, int]] = []
            for leaf, (source, spec) in enumerate(
                zip(group_sources, group.spec.leaves, strict=True)
            ):
                if source is not None and self.mode == "auto":
                    places.append((True, len(sources)))
                    sources.append(source)
                    avals.append((spec.shape, spec.np_dtype))
                else:
                    places.append((False, len(owned)))
                    owned.append(source is None)  # a passed-on leaf may share the state's buffer
                    computed_here.append(leaf)
            positions.append(places)
            if computed_here:
                wanted.append((group, computed_here))
        picks = tuple(
            _picker([i if selected else len(sources) + i for selected, i in places])
            for places in positions
        )
        plan: _StepPlan | None
        try:
            compiled = self._compile(wanted) if wanted else None
        except Exception:  # e.g. views that only trace alone: extract per group
            plan = None
        else:
            plan = _StepPlan(tuple(sources), avals, compiled, tuple(owned), picks)
        self._plans[key] = plan
        return plan

    def _compile(
        self, wanted: list[tuple[GroupWriters, list[int]]]
    ) -> Callable[[list[Any]], Sequence[Any]]:
        """The computed leaves of every group in ``wanted``, as one call compiled now."""
        treedef = self._treedef

        def computed(leaves: list[Any]) -> tuple[Any, ...]:
            state = jax.tree_util.tree_unflatten(treedef, leaves)
            out: list[Any] = []
            for group, positions in wanted:
                values = jax.tree_util.tree_leaves(group.view(state))
                out.extend(values[p] for p in positions)
            return tuple(out)

        compiled: Callable[[list[Any]], Sequence[Any]] = (
            jax.jit(computed).lower(self._template).compile()
        )
        return compiled


def _abstract(leaf: Any) -> jax.ShapeDtypeStruct:
    """Shape, dtype and weak type of a state leaf (what a compiled call accepts)."""
    aval = jax.typeof(leaf)
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type)  # type: ignore[no-untyped-call]
