"""Shared test set-up: JAX on the CPU, Hypothesis tuned for shared machines."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from hypothesis import HealthCheck, settings

# These machines are shared and noisy: no per-example deadline.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


import pytest  # noqa: E402

from servers import StoreProcess, kill_leftover_stores, start_store  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def no_store_outlives_the_session():
    """Kill (and name) store processes that a failed test left running."""
    yield
    left = kill_leftover_stores()
    if left:
        warnings.warn(f"killed store processes left running by tests: {left}", stacklevel=1)


@pytest.fixture
def store(tmp_path):
    """A real storage server process with its own data dir; stopped with SIGTERM after."""
    server: StoreProcess = start_store(tmp_path / "data")
    yield server
    code = server.stop()
    assert code == 0, "".join(server.log)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One store process for a whole test module (tests use distinct run names)."""
    server: StoreProcess = start_store(tmp_path_factory.mktemp("shared") / "data")
    yield server
    code = server.stop()
    assert code == 0, "".join(server.log)
