"""Safe structure descriptions: what comes back, and that nothing is imported."""

from __future__ import annotations

import json
import sys
from collections import namedtuple

import jax.numpy as jnp
import numpy as np
import pytest

from trajstore.errors import SchemaError
from trajstore.pytree import describe, leaf_specs, rebuild

from tests_support import Pair, Particles, Tagged


def round_trip(value, **kwargs):
    import jax

    description = json.loads(json.dumps(describe(value)))  # must survive JSON
    return rebuild(description, jax.tree_util.tree_leaves(value), **kwargs)


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": [2, (3, None)], "7": 4},
        {3: "x", 1: "y"},
        [1, {"x": 2}],
        (1,),
        Pair(1, {"k": 2}),
        Particles(1, 2, 3),
        Tagged(np.arange(3), label="hello"),
        {"nested": Pair(Particles(1, [2, 3], None), ())},
    ],
)
def test_known_structures_come_back_as_they_were(value):
    rebuilt = round_trip(value)
    assert type(rebuilt) is type(value)
    import jax

    assert jax.tree_util.tree_structure(rebuilt) == jax.tree_util.tree_structure(value)


def test_single_leaf_and_none():
    assert rebuild(describe(np.zeros(3)), ["x"]) == "x"
    assert rebuild(describe(None), []) is None


def test_unloaded_classes_come_back_as_dicts():
    description = {
        "t": "node",
        "cls": "some_module_nobody_imported:State",
        "k": ["pos", "vel"],
        "aux": None,
        "c": [{"t": "leaf"}, {"t": "leaf"}],
    }
    assert rebuild(description, [1, 2]) == {"pos": 1, "vel": 2}
    assert "some_module_nobody_imported" not in sys.modules  # looked up, never imported
    named = {"t": "namedtuple", "cls": "os:NotThere", "k": ["a"], "c": [{"t": "leaf"}]}
    assert rebuild(named, [5]) == {"a": 5}


def test_classes_that_are_not_registered_pytrees_are_not_constructed():
    # os.system is loaded and callable: a hostile description must not reach it.
    hostile = {"t": "node", "cls": "os:system", "k": ["cmd"], "aux": None, "c": [{"t": "leaf"}]}
    assert rebuild(hostile, ["echo hacked"]) == {"cmd": "echo hacked"}
    hostile_tuple = {"t": "namedtuple", "cls": "builtins:eval", "k": ["x"], "c": [{"t": "leaf"}]}
    assert rebuild(hostile_tuple, ["1+1"]) == {"x": "1+1"}


def test_like_template_overrides_the_description():
    point = namedtuple("point", "x y")
    value = rebuild(
        {"t": "dict", "k": ["x", "y"], "c": [{"t": "leaf"}] * 2}, [1, 2], like=point(0, 0)
    )
    assert value == point(1, 2)
    with pytest.raises(SchemaError, match="leaves"):
        rebuild({"t": "leaf"}, [1], like=point(0, 0))


def test_damaged_descriptions_raise_schema_errors():
    with pytest.raises(SchemaError):
        rebuild({"t": "what"}, [])
    with pytest.raises(SchemaError):
        rebuild({"t": "dict", "k": ["a"], "c": [{"t": "leaf"}]}, [])
    with pytest.raises(SchemaError):
        rebuild({"t": "leaf"}, [1, 2])


def test_leaf_specs_use_kups_paths():
    value = {
        "pos": jnp.zeros((2, 3)),
        "e": np.float32(1),
        "p": Particles(np.zeros(1), np.zeros(2, np.int8), [np.bool_(True)]),
    }
    specs = leaf_specs(value)
    assert [s.dataset_name for s in specs] == [
        "array['e']",
        "array['p'].pos",
        "array['p'].vel",
        "array['p'].energy[0]",
        "array['pos']",
    ]
    assert [(s.dtype, s.shape) for s in specs] == [
        ("float32", ()),
        ("float64", (1,)),
        ("int8", (2,)),
        ("bool", ()),
        ("float32", (2, 3)),
    ]


def test_leaf_specs_refuse_slashes():
    with pytest.raises(SchemaError, match="'/'"):
        leaf_specs({"a/b": np.zeros(1)})
