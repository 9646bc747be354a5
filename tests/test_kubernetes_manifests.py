"""The Kubernetes manifests in deploy/kubernetes: valid, and keeping their promises.

Every manifest is validated offline against the Kubernetes API schemas shipped
in ``kubernetes-validate`` (strict: unknown fields are errors), for the version
pinned here. Then the structure the scale-out design relies on: several store
replicas on one ReadWriteMany claim, a headless Service, gRPC probes on the
store's port, tokens only from the Secret (whose shipped template the store
refuses), non-root as the image's user.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from trajstore.server.auth import Role, Tokens

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
#: The Kubernetes version the manifests target (gRPC probes are GA since 1.27).
KUBERNETES_VERSION = "1.31.0"
SECRET = "trajstore-tokens"
SERVICE = "trajstore-store"
STORE_PORT = 50051


def manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name != "kustomization.yaml")


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_resources() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in load(path)]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        r
        for r in all_resources()
        if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of env values and args (``$$`` escapes)."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, text)


def container_env(container: dict[str, Any], secret: dict[str, str]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it, given the Secret's data."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
            continue
        source = var["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] == SECRET
            assert not ref.get("optional", False), "a missing Secret must stop the pod"
            env[var["name"]] = secret[ref["key"]]
        elif "fieldRef" in source:
            env[var["name"]] = f"<{source['fieldRef']['fieldPath']}>"
        else:
            raise AssertionError(f"unexpected env source {source}")
    return env


def store_container() -> dict[str, Any]:
    pod = one("Deployment", SERVICE)["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "store"]
    return container


def image_uid() -> int:
    match = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile sets a numeric USER"
    return int(match.group(1))


def test_the_pinned_version_is_shipped() -> None:
    assert KUBERNETES_VERSION in kv_utils.all_versions(), kubernetes_validate.__version__


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    docs = load(path)
    assert docs
    for doc in docs:
        # raises ValidationError (strict: unknown fields too) or SchemaNotFoundError
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_validation_catches_mistakes() -> None:
    """The validator here rejects what a cluster would (so the test above can fail)."""
    deployment = one("Deployment", SERVICE)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    unknown = yaml.safe_load(yaml.safe_dump(deployment))
    unknown["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_the_store_and_not_the_secret_template() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    for name in listed:
        assert (MANIFESTS / name).is_file(), name
    top_level = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    # Applying the kustomization must never overwrite the operator's real Secret.
    assert "secret.example.yaml" not in listed
    assert listed == top_level - {"secret.example.yaml"}
    images = {image["name"] for image in kustomization["images"]}
    assert store_container()["image"].split(":")[0] in images


def test_several_replicas_share_one_read_write_many_claim() -> None:
    deployment = one("Deployment", SERVICE)
    assert deployment["spec"]["replicas"] > 1
    claim = one("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = deployment["spec"]["template"]["spec"]
    claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert [v["persistentVolumeClaim"]["claimName"] for v in claims] == [claim["metadata"]["name"]]
    # no per-replica storage
    assert "volumeClaimTemplates" not in deployment["spec"]
    mounts = {m["name"]: m["mountPath"] for m in store_container()["volumeMounts"]}
    env = container_env(store_container(), {"write": "w", "read": "r"})
    assert mounts[claims[0]["name"]] == env["TRAJSTORE_DATA_DIR"]


def test_headless_service_selects_the_store_pods_on_its_port() -> None:
    service = one("Service", SERVICE)
    assert service["spec"]["clusterIP"] == "None"
    assert not service["spec"].get("publishNotReadyAddresses", False)
    labels = one("Deployment", SERVICE)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (grpc_port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_port["port"] == STORE_PORT
    ports = {p["name"]: p["containerPort"] for p in store_container()["ports"]}
    assert ports[grpc_port["targetPort"]] == STORE_PORT


def test_probes_use_grpc_health_on_the_listening_port() -> None:
    container = store_container()
    env = container_env(container, {"write": "w", "read": "r"})
    listen_port = int(env["TRAJSTORE_LISTEN"].rsplit(":", 1)[1])
    assert listen_port == STORE_PORT
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        assert set(spec) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}, probe
        assert spec["grpc"]["port"] == listen_port, probe
        assert spec["grpc"].get("service", "") == "", probe  # the server's overall status


def test_tokens_come_only_from_the_secret() -> None:
    container = store_container()
    env = container_env(container, {"write": "W-TOKEN", "read": "R-TOKEN"})
    tokens = Tokens.parse(env["TRAJSTORE_TOKENS"])
    assert tokens.roles == {"W-TOKEN": Role.WRITE, "R-TOKEN": Role.READ}
    assert "TRAJSTORE_INSECURE" not in env
    assert "--insecure" not in container.get("args", [])
    # The template Secret's keys are the ones referenced, and it ships no token.
    template = one("Secret", SECRET)
    assert template["stringData"] == {"write": "", "read": ""}
    assert "data" not in template


def test_the_template_secret_makes_the_store_refuse_to_start(tmp_path: Path) -> None:
    template = one("Secret", SECRET)["stringData"]
    env = container_env(store_container(), template)
    result = subprocess.run(
        [sys.executable, "-m", "trajstore", "serve", "--data-dir", str(tmp_path / "data")],
        env={
            **os.environ,
            "TRAJSTORE_TOKENS": env["TRAJSTORE_TOKENS"],
            "TRAJSTORE_LISTEN": "0.0.0.0:0",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "expected role:token" in result.stdout + result.stderr


def test_pods_run_as_the_images_non_root_user() -> None:
    uid = image_uid()
    assert uid != 0
    for kind in ("Deployment", "Job"):
        for resource in [r for r in all_resources() if r["kind"] == kind]:
            pod = resource["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] == uid
            assert pod.get("automountServiceAccountToken") is False
            for container in pod["containers"]:
                context = container["securityContext"]
                assert context["allowPrivilegeEscalation"] is False
                assert context["capabilities"]["drop"] == ["ALL"]
                assert "runAsUser" not in context or context["runAsUser"] == uid
                assert container["resources"]["requests"]["cpu"]
                assert container["resources"]["requests"]["memory"]


def test_simulation_job_reaches_every_replica_with_the_write_token() -> None:
    job = one("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = container_env(container, {"write": "W-TOKEN", "read": "R-TOKEN"})
    assert env["TRAJSTORE_TOKEN"] == "W-TOKEN"
    args = [expand(a, env) for a in container["args"]]
    address = args[args.index("--address") + 1]
    assert address == (f"dns:///{SERVICE}.<metadata.namespace>.svc.cluster.local:{STORE_PORT}")
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
