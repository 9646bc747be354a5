"""The demo: a store, three simulation nodes and an analyst, on this machine.

Starts ``trajstore serve`` on a free loopback port with a local data dir, runs
the LJ example on several nodes at once, and an analyst that lists the runs,
follows one live, reads slices, writes a plot and checks every run. Stops
everything it started; exits 0 only if every part did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trajstore.server.launch import spawn_store

__all__ = ["run_demo"]


def run_demo(
    *,
    nodes: int = 3,
    steps: int = 2000,
    side: int = 6,
    output_dir: Path = Path("demo-output"),
    data_dir: Path | None = None,
) -> int:
    """Run the whole demo; return its exit code."""
    output_dir.mkdir(parents=True, exist_ok=True)
    data = data_dir or Path(tempfile.mkdtemp(prefix="trajstore-demo-"))
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    started = time.monotonic()
    created_after = time.time() - 1  # runs a reused data dir holds from before are not ours
    store, address = spawn_store(data)
    print(f"demo: store on {address}, data in {data}")
    processes: list[subprocess.Popen[str]] = []
    try:
        for i in range(nodes):
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "trajstore.examples.lj_md",
                        "--address",
                        address,
                        "--run",
                        f"demo/lj-{i}",
                        "--seed",
                        str(i),
                        "--steps",
                        str(steps),
                        "--side",
                        str(side),
                        "--temperature",
                        str(0.8 + 0.2 * i),
                    ],
                    env=env,
                    text=True,
                )
            )
        print(f"demo: {nodes} simulation nodes started")
        analyst = subprocess.run(
            [
                sys.executable,
                "-m",
                "trajstore.examples.analyst",
                "--address",
                address,
                "--prefix",
                "demo/",
                "--follow",
                "demo/lj-0",
                "--verify",
                str(nodes),
                "--steps",
                str(steps),
                "--plot",
                str(output_dir / "energy.png"),
                "--created-after",
                str(created_after),
            ],
            env=env,
            text=True,
            check=False,
        )
        codes = [p.wait() for p in processes]
        ok = analyst.returncode == 0 and all(code == 0 for code in codes)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
        store.send_signal(signal.SIGTERM)
        try:
            store_code = store.wait(60)
        except subprocess.TimeoutExpired:
            store.kill()  # never left behind
            store.wait()
            store_code = -1
    ok = ok and store_code == 0
    print(
        f"demo: {'done' if ok else 'FAILED'} in {time.monotonic() - started:.0f}s; "
        f"plot in {output_dir / 'energy.png'}; runs kept in {data}"
    )
    return 0 if ok else 1
