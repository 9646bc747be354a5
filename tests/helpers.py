"""Small builders shared by the tests."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from trajstore import Compression, EveryNStep, Once, WriterGroupConfig, view


def md_state(n_atoms: int = 16, seed: int = 0) -> dict[str, Any]:
    """A small numpy MD-like state."""
    rng = np.random.default_rng(seed)
    return {
        "pos": rng.random((n_atoms, 3), dtype=np.float32),
        "vel": rng.random((n_atoms, 3), dtype=np.float32),
        "energy": np.float32(rng.random()),
        "box": np.eye(3, dtype=np.float32),
    }


def advance(state: dict[str, Any], step: int) -> dict[str, Any]:
    """A new state that depends on ``step`` (so every frame differs)."""
    return {
        "pos": state["pos"] + np.float32(1),
        "vel": state["vel"] * np.float32(0.5) + np.float32(step),
        "energy": np.float32(step * 0.25),
        "box": state["box"],
    }


def md_config(
    every: int = 2, compression: Compression | None = Compression()
) -> dict[str, WriterGroupConfig[Any, Any]]:
    """traj every ``every`` steps, energy every step, box once."""
    return {
        "traj": WriterGroupConfig(
            view(lambda s: {"pos": s["pos"], "vel": s["vel"]}),
            EveryNStep(every),
            compression=compression,
        ),
        "energy": WriterGroupConfig(view(lambda s: s["energy"]), EveryNStep(1)),
        "box": WriterGroupConfig(view(lambda s: s["box"]), Once(), compression=compression),
    }


def run_in_threads(work: Callable[[int], None], count: int) -> list[BaseException]:
    """Run ``work(0)`` ... ``work(count - 1)`` on threads of their own; what they raised."""
    failures: list[BaseException] = []

    def guarded(number: int) -> None:
        try:
            work(number)
        except BaseException as e:  # returned to the test
            failures.append(e)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def needs_tool(name: str, why: str) -> str:
    """The path of the command ``name``; without it the test is skipped, but fails under CI.

    CI must run every test: a missing tool there is a broken set-up, not a reason to skip.
    """
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing on this CI machine; it is needed {why}")
        pytest.skip(f"{name} is needed {why}")
    return path
