"""Access control: bearer tokens with roles, TLS, and the secure default."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from trajstore import RemoteStorageReader, RemoteStorageWriter, connect
from trajstore import errors as E
from trajstore.server.auth import Role, Tokens, is_loopback

from helpers import md_config, md_state, needs_tool
from servers import start_store

TOKENS = "write:w-secret-1, read:r-secret-2"


@pytest.fixture
def guarded(tmp_path):
    store = start_store(tmp_path / "data", env={"TRAJSTORE_TOKENS": TOKENS})
    yield store
    assert store.stop() == 0


def write(address, run, token, **kwargs):
    state = md_state()
    with RemoteStorageWriter(address, run, md_config(), state, 4, token=token, **kwargs) as log:
        for step in range(4):
            log.log(state, step)


def test_writing_needs_a_write_token(guarded):
    for token in (None, "nope", "w-secret-1x"):
        with pytest.raises(E.UnauthenticatedError):
            write(guarded.address, "r", token)
    with pytest.raises(E.PermissionDeniedError, match="only read"):
        write(guarded.address, "r", "r-secret-2")
    assert not guarded.run_file("r").exists()
    write(guarded.address, "r", "w-secret-1")
    assert guarded.run_file("r").exists()


def test_reading_needs_a_token_of_either_role(guarded, monkeypatch):
    write(guarded.address, "r", "w-secret-1")
    with pytest.raises(E.UnauthenticatedError), RemoteStorageReader(guarded.address, "r"):
        pass
    with pytest.raises(E.UnauthenticatedError):
        connect(guarded.address).list_runs()
    for token in ("r-secret-2", "w-secret-1"):
        with connect(guarded.address, token=token) as client:
            assert [r.name for r in client.list_runs()] == ["r"]
            with client.open_run("r") as reader:
                assert len(reader.focus_group("group['traj']")) == 2
                assert len(list(reader.focus_group("group['energy']").follow())) == 4
    monkeypatch.setenv("TRAJSTORE_TOKEN", "r-secret-2")  # the variable works too
    with connect(guarded.address) as client:
        assert len(client.list_runs()) == 1


def test_tokens_from_a_file_and_the_cli(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# writers\nwrite:file-token\nread:reader-token\n")
    store = start_store(tmp_path / "data", "--tokens-file", str(tokens))
    try:
        write(store.address, "f", "file-token")
        ok = subprocess.run(
            [
                sys.executable,
                "-m",
                "trajstore",
                "ls",
                "--address",
                store.address,
                "--token",
                "reader-token",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ok.returncode == 0 and ok.stdout.splitlines()[1].startswith("f ")
        refused = subprocess.run(
            [sys.executable, "-m", "trajstore", "ls", "--address", store.address],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1
        assert "UnauthenticatedError" in refused.stderr
        health = subprocess.run(
            [sys.executable, "-m", "trajstore", "health", "--address", store.address],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert health.returncode == 0  # health needs no token
    finally:
        assert store.stop() == 0


def test_token_parsing():
    tokens = Tokens.parse("write:a read:b,read:c  # comment\n\nwrite:d")
    assert tokens.role_of("a") is Role.WRITE and tokens.role_of("c") is Role.READ
    assert tokens.role_of("x") is None and tokens.role_of(None) is None
    for bad in ("admin:x", "nocolon", "write:"):
        with pytest.raises(E.InvalidArgumentError):
            Tokens.parse(bad)
    assert not Tokens.parse("# nothing\n")


def test_loopback_detection():
    assert is_loopback("127.0.0.1:0") and is_loopback("localhost:5") and is_loopback("[::1]:7")
    assert not is_loopback("0.0.0.0:50051") and not is_loopback("[::]:1")
    assert not is_loopback("10.1.2.3:50051")


def test_secure_default_refuses_to_listen_open_beyond_loopback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trajstore",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--listen",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0:0 without access tokens" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    insecure = start_store(tmp_path / "d1", "--listen", "0.0.0.0:0", "--insecure")
    assert insecure.stop() == 0
    tokened = start_store(
        tmp_path / "d2", "--listen", "0.0.0.0:0", env={"TRAJSTORE_TOKENS": "write:t"}
    )
    assert tokened.stop() == 0


@pytest.fixture
def certificate(tmp_path):
    needs_tool("openssl", "to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return cert, key


def test_tls_with_a_self_signed_certificate(tmp_path, certificate):
    cert, key = certificate
    store = start_store(
        tmp_path / "data",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        env={"TRAJSTORE_TOKENS": TOKENS},
    )
    try:
        write(store.address, "tls", "w-secret-1", tls_ca=cert)
        with connect(store.address, token="r-secret-2", tls_ca=cert) as client:
            with client.open_run("tls") as reader:
                np.testing.assert_array_equal(reader.focus_group("group['box']")[...], np.eye(3))
        with pytest.raises(E.UnavailableError):  # plain text to a TLS port
            connect(store.address, token="r-secret-2", timeout=5).list_runs()
        health = [sys.executable, "-m", "trajstore", "health", "--address", store.address]
        checked = subprocess.run(
            [*health, "--tls-ca", str(cert)], capture_output=True, text=True, timeout=120
        )
        assert checked.returncode == 0 and checked.stdout.strip() == "SERVING", checked.stderr
        plain = subprocess.run([*health, "--timeout", "3"], capture_output=True, timeout=120)
        assert plain.returncode != 0  # the container's HEALTHCHECK needs TRAJSTORE_TLS_CA too
    finally:
        assert store.stop() == 0
