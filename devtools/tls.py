"""A development certificate for `cluster up --tls`: HAProxy terminates TLS with it (https,
wss), and redis-server serves its TLS port with it (rediss://).

One self-signed certificate for localhost, 127.0.0.1 and ::1, made with `cryptography` (it
comes with Daphne's Twisted): a client trusts it by naming the file as its CA (curl --cacert,
httpx verify=, redis-py ssl_ca_certs=). It is made once per run dir and kept, so a browser told
to trust it once keeps trusting it. Never for production: there, HAProxy gets a real
certificate (docs/deploying.md).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 365


@dataclass(frozen=True)
class DevCertificate:
    cert: Path  # PEM certificate: also the CA file clients trust
    key: Path  # PEM private key (mode 600)
    bundle: Path  # certificate then key, as HAProxy's `crt` takes it (mode 600)


def dev_certificate(directory: Path) -> DevCertificate:
    """The certificate in `directory`, made if it is not there yet (or has expired)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = DevCertificate(directory / "dev-cert.pem", directory / "dev-key.pem",
                           directory / "dev-bundle.pem")  # fmt: skip
    if paths.cert.exists() and paths.key.exists() and paths.bundle.exists():
        existing = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        if existing.not_valid_after_utc > _now() + datetime.timedelta(days=1):
            return paths
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Switchboard development")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        # Its own CA: clients that trust this file accept the server's certificate.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    paths.cert.write_bytes(cert_pem)
    for path, content in ((paths.key, key_pem), (paths.bundle, cert_pem + key_pem)):
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_bytes(content)
    return paths


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
