"""Operations: health service, reflection, Prometheus metrics, structured logs."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from trajstore import RemoteStorageWriter, connect, serve

from helpers import md_config, md_state
from servers import start_store


def test_health_and_reflection(store):
    with grpc.insecure_channel(store.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "trajstore.v1.IngestService",
        "trajstore.v1.QueryService",
        "grpc.health.v1.Health",
    } <= services
    result = subprocess.run(
        [sys.executable, "-m", "trajstore", "health", "--address", store.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == "SERVING"
    down = subprocess.run(
        [sys.executable, "-m", "trajstore", "health", "--address", "127.0.0.1:1", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 1


def test_metrics_endpoint_counts_what_happens(tmp_path):
    handle = serve(tmp_path / "data", "127.0.0.1:0", metrics_listen="127.0.0.1:0")
    try:
        state = md_state()
        with RemoteStorageWriter(handle.address, "m", md_config(every=1), state, 10) as log:
            for step in range(10):
                log.log(state, step)
            log.flush()
            text = (
                urllib.request.urlopen(
                    f"http://127.0.0.1:{handle.metrics_port}/metrics", timeout=30
                )
                .read()
                .decode()
            )
            assert "trajstore_open_runs 1.0" in text
        with connect(handle.address) as client, client.open_run("m") as reader:
            reader.focus_group("group['traj']")[:]
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{handle.metrics_port}/metrics", timeout=30)
            .read()
            .decode()
        )
    finally:
        handle.stop()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["trajstore_frames_received_total"] == 21  # traj 10, energy 10, box 1
    assert values["trajstore_bytes_received_total"] > 10 * 16 * 3 * 4 * 2
    assert values["trajstore_acknowledgements_total"] >= 1
    assert values["trajstore_flush_seconds_count"] >= 1
    assert values["trajstore_open_runs"] == 0
    assert values["trajstore_read_requests_total"] >= 1
    assert values["trajstore_bytes_read_total"] >= 10 * 16 * 3 * 4 * 2
    assert "trajstore_queued_bytes" in values


def test_json_logs(tmp_path):
    store = start_store(tmp_path / "data", "--log-format", "json", "--log-level", "INFO")
    try:
        state = md_state()
        with RemoteStorageWriter(store.address, "logged", md_config(), state, 2) as log:
            log.log(state, 0)
    finally:
        assert store.stop() == 0
    records = [json.loads(line) for line in store.log if line.startswith("{")]
    opened = [r for r in records if r.get("message") == "run opened"]
    assert opened and opened[0]["run"] == "logged" and opened[0]["mode"] == "create"
    assert {"time", "level", "logger"} <= set(opened[0])
