"""The ``trajstore`` command, run as a real process against a real store."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import pytest

from trajstore import RemoteStorageWriter

from helpers import advance, md_config, md_state


def trajstore(*args, env=None, check=True, timeout=300):
    result = subprocess.run(
        [sys.executable, "-m", "trajstore", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def runs(store):
    for run, steps in (("proj/a", 12), ("proj/b", 4)):
        state = md_state()
        with RemoteStorageWriter(
            store.address, run, md_config(every=2), state, steps, metadata={"run": run}
        ) as log:
            for step in range(steps):
                state = advance(state, step)
                log.log(state, step)
    return store


def test_ls_and_info(runs):
    out = trajstore("ls", "--address", runs.address).stdout
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["RUN", "STATE"]
    assert lines[1].startswith("proj/a") and "closed" in lines[1] and "['traj']=6" in lines[1]
    assert lines[2].startswith("proj/b")
    env_out = trajstore("ls", "--prefix", "proj/b", env={"TRAJSTORE_ADDRESS": runs.address})
    assert len(env_out.stdout.splitlines()) == 2
    info = trajstore("info", "proj/a", "--address", runs.address).stdout
    assert '{"run": "proj/a"}' in info
    assert "group['traj']: 6 frames, every_n_step(2), zstd" in info
    assert "['pos']" in info and "float32" in info and "[16, 3]" in info


def test_tail_prints_every_frame_of_a_closed_run(runs):
    result = trajstore("tail", "proj/a", "energy", "--address", runs.address)
    lines = result.stdout.splitlines()
    assert len(lines) == 12
    assert lines[0].split()[:2] == ["step", "0"] and "value=0" in lines[0]
    assert lines[-1].split()[:2] == ["step", "11"] and "value=2.75" in lines[-1]
    assert "12 frames" in result.stderr


def test_tail_numbers_frames_by_step(runs):
    """traj logs every 2 steps: its lines say steps 0, 2, ...; --from-step starts there."""
    every = trajstore("tail", "proj/a", "traj", "--address", runs.address).stdout.splitlines()
    assert [line.split()[1] for line in every] == ["0", "2", "4", "6", "8", "10"]
    late = trajstore("tail", "proj/a", "traj", "--from-step", "5", "--address", runs.address)
    assert [line.split()[1] for line in late.stdout.splitlines()] == ["6", "8", "10"]


def test_pull_and_plot(runs, tmp_path):
    trajstore("pull", "proj/a", "-o", str(tmp_path / "a.h5"), "--address", runs.address)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["traj/pos"].shape == (6, 16, 3)
    trajstore("plot", "proj/a", "energy", "-o", str(tmp_path / "e.png"), "--address", runs.address)
    trajstore(
        "plot",
        "proj/a",
        "traj",
        "--field",
        "pos",
        "-o",
        str(tmp_path / "p.png"),
        "--address",
        runs.address,
    )
    for name in ("e.png", "p.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_errors_are_one_clear_line_and_a_non_zero_exit(runs, tmp_path):
    result = trajstore("info", "proj/absent", "--address", runs.address, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["Error: RunNotFoundError: no run 'proj/absent'"]
    bad = trajstore("info", "../x", "--address", runs.address, check=False)
    assert bad.returncode == 1 and "InvalidRunNameError" in bad.stderr
    down = trajstore("ls", "--address", "127.0.0.1:1", check=False)
    assert down.returncode == 1 and "UnavailableError" in down.stderr
    field = trajstore(
        "plot",
        "proj/a",
        "traj",
        "-o",
        str(tmp_path / "x.png"),
        "--address",
        runs.address,
        check=False,
    )
    assert field.returncode == 1 and "--field" in field.stderr
    assert len(field.stderr.strip().splitlines()) == 1
    with RemoteStorageWriter(runs.address, "proj/empty", md_config(), md_state(), 10):
        pass  # opened and closed: no frames
    empty = trajstore(
        "plot",
        "proj/empty",
        "energy",
        "-o",
        str(tmp_path / "e.png"),
        "--address",
        runs.address,
        check=False,
    )
    assert empty.returncode == 1
    assert empty.stderr.strip().splitlines() == [
        "Error: group['energy'] of proj/empty has no frames yet"
    ]
    no_nodes = trajstore("demo", "--nodes", "0", check=False)
    assert no_nodes.returncode == 2 and "--nodes" in no_nodes.stderr


def test_plot_and_address_mistakes_are_one_line(runs, tmp_path):
    def fails(*args):
        result = trajstore(*args, check=False)
        assert result.returncode == 1, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr  # no traceback
        return lines[0]

    out = str(tmp_path / "x.png")
    once = fails("plot", "proj/a", "box", "-o", out, "--address", runs.address)
    assert once == "Error: group['box'] is logged once: it has no steps to plot against"
    single = fails(
        "plot", "proj/a", "energy", "--field", "total", "-o", out, "--address", runs.address
    )
    assert "stores one value (energy), not 'total': leave the field out" in single
    several = fails("plot", "proj/a", "traj", "--field", "x", "-o", out, "--address", runs.address)
    assert "no field 'x' among: pos, vel (--field)" in several
    bare = fails("ls", "--address", "localhost")
    assert "'localhost' has no port: write host:port" in bare and "localhost:50051" in bare


def test_the_start_line_says_who_may_call_and_log_lines_name_run_and_peer(tmp_path):
    from servers import start_store

    store = start_store(
        tmp_path / "data", "--log-level", "INFO", env={"TRAJSTORE_TOKENS": "write:w-1234567"}
    )
    try:
        state = md_state()
        with RemoteStorageWriter(
            store.address, "proj/logged", md_config(), state, 2, token="w-1234567"
        ) as log:
            log.log(state, 0)
    finally:
        assert store.stop() == 0
    text = "".join(store.log)
    start = next(line for line in store.log if line.startswith("trajstore serving on"))
    assert "tokens required; plain text" in start
    opened = next(line for line in store.log if "run opened" in line)
    assert "run=proj/logged" in opened and "peer=ipv4:127.0.0.1:" in opened
    assert "w-1234567" not in text  # never a token in the log
    open_store = start_store(tmp_path / "open")
    try:
        start = next(line for line in open_store.log if line.startswith("trajstore serving on"))
        assert "no tokens: loopback callers only" in start
    finally:
        assert open_store.stop() == 0


def test_every_command_has_help():
    for command in ("serve", "ls", "info", "tail", "pull", "plot", "demo"):
        out = trajstore(command, "--help").stdout
        assert "Usage:" in out
        if command not in ("serve", "demo"):
            assert "TRAJSTORE_ADDRESS" in out and "TRAJSTORE_TOKEN" in out


def test_demo_runs_end_to_end(tmp_path):
    result = trajstore(
        "demo",
        "--steps",
        "150",
        "--side",
        "3",
        "--output-dir",
        str(tmp_path / "out"),
        "--data-dir",
        str(tmp_path / "data"),
    )
    assert "analyst: all runs complete and sane" in result.stdout
    assert "follow demo/lj-0: 150 frames live" in result.stdout
    assert "xarray: 3 runs x 150 steps of " in result.stdout  # the runs stacked in one Dataset
    assert (tmp_path / "out" / "energy.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (tmp_path / "data" / "demo").iterdir()) == [
        name for i in range(3) for name in (f"lj-{i}.h5", f"lj-{i}.h5.lock")
    ]
