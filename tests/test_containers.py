"""The image ``trajstore:local`` as real containers, driven through the Docker SDK.

- One store container, locked down as the Kubernetes manifests run it
  (uid 10001, read-only root, no capabilities): a run streamed from the host
  with ``RemoteStorageWriter`` reads back whole; tokens are enforced, the gRPC
  health service answers without one (the probes rely on it).
- Three store containers on one Docker network and one volume, the client given
  the list of their addresses: the store serving a run is SIGKILLed mid-stream,
  and every run still completes with every frame exactly once.

Marked ``containers``; skipped when no Docker daemon answers or the image is
absent, unless ``TRAJSTORE_REQUIRE_DOCKER=1`` (``scripts/container-check``
sets it), which turns those skips into failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from trajstore import RemoteStorageWriter, connect
from trajstore.errors import UnauthenticatedError

from servers import LIVE_WRITER, live_config, live_state, wait_until

pytestmark = pytest.mark.containers

IMAGE = os.environ.get("TRAJSTORE_IMAGE", "trajstore:local")
REQUIRED = os.environ.get("TRAJSTORE_REQUIRE_DOCKER") == "1"
GROUP = "group['x']"
#: How the Kubernetes manifests run the store (deploy/kubernetes/deployment.yaml).
LOCKED_DOWN: dict[str, Any] = {
    "user": "10001:10001",
    "read_only": True,
    "tmpfs": {"/tmp": ""},  # the container's own /tmp, as the manifests' emptyDir
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
}


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (and TRAJSTORE_REQUIRE_DOCKER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    try:
        import docker
    except ImportError:
        unavailable("the Docker SDK (package 'docker') is not installed")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as e:
        unavailable(f"no Docker daemon answers: {e}")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(f"the image {IMAGE} is absent (scripts/container-check builds it)")
    yield client
    client.close()


class Stack:
    """Containers, networks and volumes made by one test, removed after it."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.prefix = f"trajstore-test-{uuid.uuid4().hex[:8]}"
        self.write_token = secrets.token_hex(16)
        self.read_token = secrets.token_hex(16)
        self.containers: list[Any] = []
        self.networks: list[Any] = []
        self.volumes: list[Any] = []

    def volume(self) -> Any:
        volume = self.client.volumes.create(name=f"{self.prefix}-data")
        self.volumes.append(volume)
        return volume

    def network(self) -> Any:
        network = self.client.networks.create(f"{self.prefix}-net", driver="bridge")
        self.networks.append(network)
        return network

    def store(self, name: str, volume: Any, network: Any | None = None) -> Any:
        """A store container with tokens, its port 50051 published on 127.0.0.1."""
        container = self.client.containers.run(
            IMAGE,
            ["serve"],
            name=f"{self.prefix}-{name}",
            hostname=f"{self.prefix}-{name}",
            detach=True,
            environment={
                "TRAJSTORE_TOKENS": f"write:{self.write_token},read:{self.read_token}",
                "TRAJSTORE_LOG_FORMAT": "json",
            },
            volumes={volume.name: {"bind": "/data", "mode": "rw"}},
            network=network.name if network is not None else None,
            ports={"50051/tcp": ("127.0.0.1", None)},
            healthcheck={
                "test": ["CMD", "trajstore", "health"],
                "interval": 1_000_000_000,
                "timeout": 5_000_000_000,
                "retries": 120,
            },
            init=True,
            **LOCKED_DOWN,
        )
        self.containers.append(container)
        return container

    def wait_healthy(self, container: Any, timeout: float = 180) -> str:
        """Wait until Docker reports the container healthy; its host address."""

        def healthy() -> bool:
            container.reload()
            state = container.attrs["State"]
            if state["Status"] != "running":
                raise AssertionError(f"{container.name} is {state['Status']}:\n{logs(container)}")
            return bool(state.get("Health", {}).get("Status") == "healthy")

        wait_until(healthy, timeout=timeout, interval=0.5)
        (binding,) = container.ports["50051/tcp"]
        return f"127.0.0.1:{binding['HostPort']}"

    def remove(self) -> None:
        for container in self.containers:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        for network in self.networks:
            with contextlib.suppress(Exception):
                network.remove()
        for volume in self.volumes:
            with contextlib.suppress(Exception):
                volume.remove(force=True)


@pytest.fixture
def stack(docker_client: Any) -> Iterator[Stack]:
    made = Stack(docker_client)
    try:
        yield made
    finally:
        made.remove()


def logs(container: Any, lines: int = 40) -> str:
    with contextlib.suppress(Exception):
        return container.logs(tail=lines).decode(errors="replace")
    return "(no logs)"


def assert_every_frame_once(address: str, run: str, frames: int, token: str) -> None:
    """The live writer's run holds frames 0..frames-1, each once, in order (read remotely)."""
    with connect(address, token=token) as client, client.open_run(run) as reader:
        group = reader.focus_group(GROUP)
        assert len(group) == frames
        values = group[:]
    np.testing.assert_array_equal(values["b"], np.arange(frames))
    np.testing.assert_array_equal(values["a"][:, 7, 2], np.arange(frames, dtype=np.float32))


def durable(address: str, run: str, token: str) -> int:
    with connect(address, token=token, timeout=30) as client:
        for info in client.list_runs():
            if info.name == run:
                return int(info.frames[GROUP])
    return 0


def test_image_runs_as_non_root(docker_client: Any) -> None:
    config = docker_client.images.get(IMAGE).attrs["Config"]
    assert config["User"] == LOCKED_DOWN["user"]


def test_stream_a_run_into_one_store_container(stack: Stack) -> None:
    store = stack.store("store", stack.volume())
    address = stack.wait_healthy(store)

    # The health service answers without a token (what orchestrators' probes need).
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    frames = 300
    with RemoteStorageWriter(
        address,
        "host/one",
        live_config(),
        live_state(0),
        frames,
        compile_views=False,
        token=stack.write_token,
    ) as log:
        for step in range(frames):
            log.log(live_state(step), step)

    assert_every_frame_once(address, "host/one", frames, stack.read_token)
    with pytest.raises(UnauthenticatedError), connect(address, token="") as client:
        client.list_runs()
    store.reload()
    assert store.attrs["State"]["Status"] == "running"


def lock_holder(container: Any, run: str) -> str:
    """The host name recorded in ``<run>.h5.lock`` on the shared volume."""
    code, output = container.exec_run(
        [
            "python",
            "-c",
            "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['host']))",
            f"/data/{run}.h5.lock",
        ],
        user=LOCKED_DOWN["user"],
    )
    assert code == 0, output.decode(errors="replace")
    return str(json.loads(output.decode().strip().splitlines()[-1]))


@pytest.mark.timeout(600)
def test_killed_store_fails_over_to_another_replica(stack: Stack, tmp_path: Path) -> None:
    volume, network = stack.volume(), stack.network()
    stores = [stack.store(f"store-{i}", volume, network) for i in range(3)]
    addresses = [stack.wait_healthy(store) for store in stores]
    target = ",".join(addresses)

    runs = [f"multi/r{i}" for i in range(3)]
    frames = 1500
    writers = []
    for run in runs:
        out = (tmp_path / f"{run.replace('/', '-')}.log").open("w")
        writers.append(
            (
                run,
                out,
                subprocess.Popen(
                    [
                        *(sys.executable, str(LIVE_WRITER), "--address", target),
                        *("--run", run, "--frames", str(frames), "--pause", "0.01"),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "TRAJSTORE_TOKEN": stack.write_token},
                ),
            )
        )
    try:
        victim_run = runs[0]

        def streaming() -> bool:
            for run, _, writer in writers:
                if writer.poll() is not None:
                    text = (tmp_path / f"{run.replace('/', '-')}.log").read_text()
                    raise AssertionError(f"writer of {run} exited early:\n{text[-3000:]}")
            # Any replica lists every run: watch through the first one.
            return durable(addresses[0], victim_run, stack.read_token) >= 100

        wait_until(streaming, timeout=180, interval=0.2)
        holder = lock_holder(stores[0], victim_run)
        (victim,) = [s for s in stores if s.attrs["Config"]["Hostname"] == holder]
        before = durable(addresses[0], victim_run, stack.read_token)
        assert writers[0][2].poll() is None, "the writer finished before the kill"
        victim.kill(signal="SIGKILL")
        victim.reload()
        assert victim.attrs["State"]["Status"] != "running"
        assert before < frames, "the kill must land mid-stream"

        deadline = time.monotonic() + 300
        for run, out, writer in writers:
            code = writer.wait(timeout=max(1.0, deadline - time.monotonic()))
            out.close()
            text = (tmp_path / f"{run.replace('/', '-')}.log").read_text()
            assert code == 0, f"writer of {run} exited {code}:\n{text[-3000:]}"
            assert "done" in text
    finally:
        for _, out, writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait(30)
            out.close()

    survivors = [a for s, a in zip(stores, addresses, strict=True) if s is not victim]
    # A surviving replica took the run's lock, recovered the file and resumed it.
    for run in runs:
        assert_every_frame_once(survivors[0], run, frames, stack.read_token)
