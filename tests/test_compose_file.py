"""docker-compose.yml keeps its scale-out promises (checked statically, in every test run).

``scripts/container-check`` runs the stack for real; this catches a regression
without Docker: several store replicas on one volume, no fixed host port that
replicas would fight over, clients reaching every replica by the service's
DNS name, healthchecks, and no default tokens.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def interpolated_default(value: object) -> str:
    """``${VAR:-default}`` -> ``default`` (what Compose uses when VAR is unset)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", str(value))


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_store_runs_several_replicas_on_one_volume() -> None:
    store = compose()["services"]["store"]
    assert int(interpolated_default(store["deploy"]["replicas"])) > 1
    assert "store-data:/data" in store["volumes"]
    assert store["environment"]["TRAJSTORE_DATA_DIR"] == "/data"
    assert store["healthcheck"]["test"] == ["CMD", "trajstore", "health"]
    assert "container_name" not in store  # a fixed name cannot be scaled


def test_replicas_do_not_fight_over_host_ports() -> None:
    store = compose()["services"]["store"]
    replicas = int(interpolated_default(store["deploy"]["replicas"]))
    for mapping in store["ports"]:
        host_ip, host_ports, container_port = interpolated_default(mapping).split(":")
        assert host_ip == "127.0.0.1"
        assert "-" not in container_port
        if host_ports:  # a range wide enough for every replica, or none (ephemeral)
            first, _, last = host_ports.partition("-")
            assert last, f"fixed host port {host_ports} in {mapping}"
            assert int(last) - int(first) + 1 >= replicas


def test_clients_reach_every_replica_by_dns() -> None:
    services = compose()["services"]
    port = interpolated_default(services["store"]["environment"]["TRAJSTORE_LISTEN"])
    port = port.rsplit(":", 1)[1]
    clients = [name for name in services if name != "store"]
    assert clients
    for name in clients:
        command = services[name]["command"]
        assert command[command.index("--address") + 1] == f"dns:///store:{port}", name
        assert services[name]["depends_on"]["store"]["condition"] == "service_healthy"


def test_no_default_tokens() -> None:
    services = compose()["services"]
    tokens = services["store"]["environment"]["TRAJSTORE_TOKENS"]
    # ${VAR:?message}: Compose refuses to start without the variable
    assert re.fullmatch(
        r"write:\$\{TRAJSTORE_WRITE_TOKEN:\?[^}]*\},read:\$\{TRAJSTORE_READ_TOKEN:\?[^}]*\}",
        tokens,
    )
    for service in services.values():
        for name, value in (service.get("environment") or {}).items():
            if "TOKEN" in name:
                assert "${" in str(value), name
