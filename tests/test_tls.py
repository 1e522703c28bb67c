"""The API over TLS, and with client certificates required, from certificates made here."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from studio.v1 import client_pb2, client_pb2_grpc
from tests.conftest import ApiServer
from tests.serving import STUDIO, start_serve


def _issue(name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
           *, ca: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )  # fmt: skip
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def _write(
    path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_file, key_file = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_file, key_file


def _list(channel: grpc.Channel, key: str) -> int:
    stub = client_pb2_grpc.ClientServiceStub(channel)
    response = stub.ListClients(client_pb2.ListClientsRequest(), timeout=5,
                                metadata=[("authorization", f"Bearer {key}")])  # fmt: skip
    return len(response.clients)


@pytest.mark.parametrize("mutual", [False, True])
def test_the_api_is_served_over_tls(api_server: ApiServer, tmp_path: Path, mutual: bool) -> None:
    ca = _issue("studio test CA", None, ca=True)
    ca_file, _ = _write(tmp_path / "ca", *ca)
    server_cert, server_key = _write(tmp_path / "server", *_issue("localhost", ca))
    client_cert, client_key = _write(tmp_path / "client", *_issue("a caller", ca))
    tenant = api_server.new_tenant("tls")
    flags = ["--tls-cert", str(server_cert), "--tls-key", str(server_key)]
    if mutual:
        flags += ["--tls-client-ca", str(ca_file)]
    server = start_serve(tmp_path / "serve", "--no-demo", "--skip-migrations", *flags,
                         master_url=api_server.master_url)  # fmt: skip
    try:
        trusted = grpc.ssl_channel_credentials(
            root_certificates=ca_file.read_bytes(),
            private_key=client_key.read_bytes() if mutual else None,
            certificate_chain=client_cert.read_bytes() if mutual else None,
        )
        with grpc.secure_channel(server.address, trusted) as channel:
            assert _list(channel, tenant.key) == 0

        with grpc.insecure_channel(server.address) as plain, pytest.raises(grpc.RpcError) as raised:
            _list(plain, tenant.key)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        if mutual:  # trusting the server is not enough: the caller must show a certificate
            anonymous = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
            with (
                grpc.secure_channel(server.address, anonymous) as channel,
                pytest.raises(grpc.RpcError) as raised,
            ):
                _list(channel, tenant.key)
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE

        # Connect on the HTTP port is served over TLS too (HTTP/2 by ALPN), never in the clear
        url = f"https://127.0.0.1:{server.http_port}/studio.v1.ClientService/ListClients"
        client = ["--cert", str(client_cert), "--key", str(client_key)] if mutual else []
        assert _curl(url, tenant.key, "--cacert", str(ca_file), "--http2", *client) == (0, "{}")
        plain = url.replace("https://", "http://")
        assert _curl(plain, tenant.key)[0] != 0
        if mutual:
            assert _curl(url, tenant.key, "--cacert", str(ca_file))[0] != 0
    finally:
        server.terminate()


def _curl(url: str, key: str, *options: str) -> tuple[int, str]:
    """curl's exit code and the body of a Connect JSON call."""
    result = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--max-time", "10", *options,
         "-H", "content-type: application/json", "-H", f"authorization: Bearer {key}",
         "-d", "{}", url],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return result.returncode, result.stdout


@pytest.mark.parametrize(
    "flags",
    [("--tls-cert", "cert.pem"), ("--tls-key", "key.pem"), ("--tls-client-ca", "ca.pem")],
)
def test_half_a_tls_configuration_is_refused_not_served_in_the_clear(
    tmp_path: Path, flags: tuple[str, str]
) -> None:
    result = subprocess.run(
        [STUDIO, "serve", "--port", "0", "--http-port", "0", "--data-dir", str(tmp_path), flags[0],
         str(tmp_path / flags[1])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--tls-cert and --tls-key go together" in result.stderr
    assert "serving gRPC" not in result.stdout
