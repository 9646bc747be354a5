"""Starting and stopping the store: in Python, and by command with flags or variables."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from trajstore import HDF5StorageReader, RemoteStorageWriter, cli, serve
from trajstore import errors as E
from trajstore.server.config import Limits, ServerConfig

from helpers import md_config, md_state


def test_in_process_serve_on_port_zero_and_graceful_stop(tmp_path):
    handle = serve(tmp_path / "data", "127.0.0.1:0")
    try:
        assert handle.port > 0
        state = md_state()
        with RemoteStorageWriter(handle.address, "p/r", md_config(), state, 4) as log:
            for step in range(4):
                log.log(state, step)
    finally:
        handle.stop()
    assert handle.wait(0)
    with HDF5StorageReader(tmp_path / "data" / "p" / "r.h5") as reader:
        assert reader.actual_steps == 4


def test_stop_flushes_runs_still_open(tmp_path):
    handle = serve(tmp_path / "data", "127.0.0.1:0", flush_interval=3600)
    state = md_state()
    log = RemoteStorageWriter(handle.address, "open", md_config(every=1), state, 4).__enter__()
    for step in range(3):
        log.log(state, step)
    log.flush()
    handle.stop(grace=1)  # the writer never closed the run: the store still closes it cleanly
    import h5py

    with h5py.File(tmp_path / "data" / "open.h5", "r") as f:  # plain open: not left in SWMR
        assert f["energy"].attrs["frames"] == 3
    log._sender.cancel()  # the connection is gone; abandon it


def test_wait_returns_once_every_run_is_closed(tmp_path):
    handle = serve(tmp_path / "data", "127.0.0.1:0", flush_interval=3600)
    state = md_state()
    log = RemoteStorageWriter(handle.address, "open", md_config(every=1), state, 4).__enter__()
    try:
        for step in range(3):
            log.log(state, step)
        log.flush()
        stopping = threading.Thread(target=handle.stop, kwargs={"grace": 1})
        stopping.start()
        assert handle.wait(120)
        assert not handle.registry.is_open("open")  # flushed and closed, not just stopping
        stopping.join(60)
    finally:
        log._sender.cancel()  # the connection is gone; abandon it


def test_every_flag_is_also_an_environment_variable(tmp_path):
    env = {
        **os.environ,
        "TRAJSTORE_DATA_DIR": str(tmp_path / "envdata"),
        "TRAJSTORE_LISTEN": "127.0.0.1:0",
        "TRAJSTORE_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "trajstore", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    process.terminate()
    assert process.wait(60) == 0
    assert line.startswith("trajstore serving on 127.0.0.1:")
    assert str(tmp_path / "envdata") in line
    assert (tmp_path / "envdata").is_dir()


def test_every_option_of_serve_has_its_variable():
    options = [p for p in cli.serve.params if isinstance(p, click.Option)]
    assert len(options) >= 20
    for option in options:
        assert option.envvar == "TRAJSTORE_" + option.name.upper(), option.name
        assert option.show_envvar, option.name
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for option in options:  # README's table of settings names every one
        assert f"`{option.opts[0]}`" in readme and f"`{option.envvar}`" in readme, option.name


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-message-bytes", "0"),  # would split every read into empty parts forever
        ("--max-pending-bytes", "0"),
        ("--max-frame-bytes", "-1"),
        ("--max-open-runs", "0"),
        ("--max-workers", "0"),
        ("--flush-bytes", "0"),
        ("--compress-threads", "0"),
        ("--flush-interval", "0"),
        ("--lease-seconds", "-5"),
        ("--shutdown-grace", "-1"),
    ],
)
def test_out_of_range_settings_are_refused_before_the_store_starts(tmp_path, flag, value):
    data = tmp_path / "data"
    result = CliRunner().invoke(cli.main, ["serve", "--data-dir", str(data), flag, value])
    assert result.exit_code == 2, result.output
    assert flag in result.output and "range" in result.output
    assert not data.exists()


def test_out_of_range_settings_are_refused_in_python_too(tmp_path):
    for limits in ({"max_message_bytes": 0}, {"max_pending_bytes_per_run": -1}):
        with pytest.raises(E.InvalidArgumentError, match="at least 1"):
            Limits(**limits)
    for settings in ({"flush_interval": 0.0}, {"lease_seconds": -1.0}, {"max_workers": 0}):
        with pytest.raises(E.InvalidArgumentError, match=r"positive|at least 1"):
            ServerConfig(data_dir=tmp_path, **settings)


def test_help_lists_the_variables():
    result = subprocess.run(
        [sys.executable, "-m", "trajstore", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for variable in (
        "TRAJSTORE_DATA_DIR",
        "TRAJSTORE_LISTEN",
        "TRAJSTORE_FLUSH_INTERVAL",
        "TRAJSTORE_MAX_MESSAGE_BYTES",
        "TRAJSTORE_MAX_OPEN_RUNS",
    ):
        assert variable in result.stdout
