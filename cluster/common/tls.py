"""TLS (``clusterctl up --tls``) for traffic that may cross untrusted networks.

At start the head makes a per-cluster CA, a server certificate for itself (its key stays
in its memory) and one shared by the daemons' object transfer servers. The 0600 cluster
file carries the CA certificate, and the daemons' key and certificate (whoever can read
that file holds the cluster secret anyway). Daemons, remote drivers and ``clusterctl``
verify the head against the CA; daemons and drivers verify transfer servers the same way.
Local paths (the driver lane, the store's socket, direct actor calls on one host) are Unix
sockets in 0700 directories and need none; with TLS on, direct actor calls from other
hosts go through the head's TLS stream instead of a plain TCP connection.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from typing import Any

#: The name every head certificate carries; clients check it whatever address they dial.
TARGET_NAME = "shoal-head"
#: The name of the daemons' shared transfer certificate.
NODE_NAME = "shoal-node"


def make_certificates(addresses: list[str]) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server key, server certificate), PEM, for a head at `addresses`."""
    ca, key, cert, _, _ = make_cluster_certificates(addresses)
    return ca, key, cert


def make_cluster_certificates(addresses: list[str]
                              ) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """(CA certificate, head key, head certificate, node key, node certificate), PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal cluster CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[Any] = [x509.DNSName(TARGET_NAME), x509.DNSName(socket.gethostname())]
    for address in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))

    def issue(name: str, public_key: Any, alternative: list[Any]) -> Any:
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
                .sign(ca_key, hashes.SHA256()))

    cert = issue(TARGET_NAME, key.public_key(), names)
    node_key = ec.generate_private_key(ec.SECP256R1())
    node_cert = issue(NODE_NAME, node_key.public_key(), [x509.DNSName(NODE_NAME)])
    pem = serialization.Encoding.PEM

    def private(k: Any) -> bytes:
        return k.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    return (ca_cert.public_bytes(pem), private(key), cert.public_bytes(pem), private(node_key),
            node_cert.public_bytes(pem))


def server_context(key_pem: str | bytes, cert_pem: str | bytes) -> Any:
    """An ssl server context for a transfer server (the node key and certificate)."""
    import ssl
    import tempfile

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain reads files only: hand it a private temporary file, at once removed.
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as f:
        for part in (key_pem, cert_pem):
            f.write(part.encode() if isinstance(part, str) else part)
        f.flush()
        context.load_cert_chain(f.name)
    return context


def client_context(ca_pem: str | bytes) -> Any:
    """An ssl client context verifying transfer servers against the cluster's CA."""
    import ssl

    context = ssl.create_default_context(
        cadata=ca_pem.decode() if isinstance(ca_pem, bytes) else ca_pem)
    return context


def server_credentials(key_pem: bytes, cert_pem: bytes) -> Any:
    """grpc server credentials for the head."""
    import grpc

    return grpc.ssl_server_credentials([(key_pem, cert_pem)])


def channel_options(options: list[tuple[str, Any]], ca_pem: str | bytes | None) -> list:
    """Channel options, plus the name to verify when TLS is on."""
    if not ca_pem:
        return options
    return [*options, ("grpc.ssl_target_name_override", TARGET_NAME)]


def channel(address: str, ca_pem: str | bytes | None, options: list, aio: bool = False) -> Any:
    """A channel to the head: verified TLS when the cluster has a CA, else plain."""
    import grpc

    module = grpc.aio if aio else grpc
    opts = channel_options(options, ca_pem)
    if ca_pem:
        ca = ca_pem.encode() if isinstance(ca_pem, str) else ca_pem
        return module.secure_channel(address, grpc.ssl_channel_credentials(ca), options=opts)
    return module.insecure_channel(address, options=opts)
