"""TLS for a queen that listens beyond loopback: a self-signed certificate for the machine's names
(`rbee queen tls-init`), the server's context, and the client's check of the queen's certificate against a
pinned SHA-256 fingerprint or a CA file. The key file is 0600; the fingerprint is what a teammate is told."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path

import aiohttp

from shared.errors import RbeeError

CERT_DAYS = 825  # what browsers and TLS libraries still accept for a server certificate's life


class TlsError(RbeeError):
    title = "TLS problem"
    code = "TLS"
    status = 400


def machine_names() -> tuple[list[str], list[str]]:
    """DNS names and IP addresses this machine answers to: its host name, its FQDN, localhost, loopback,
    and the addresses its name resolves to."""
    names = {"localhost", socket.gethostname()}
    fqdn = socket.getfqdn()
    if fqdn and fqdn != "localhost":
        names.add(fqdn)
    addresses = {"127.0.0.1", "::1"}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addresses.add(str(info[4][0]))
    except OSError:  # a name that does not resolve: loopback only
        pass
    return sorted(n for n in names if n), sorted(addresses)


def make_self_signed(names: list[str], addresses: list[str]) -> tuple[bytes, bytes]:
    """A certificate (PEM) valid for `names` and `addresses`, and its private key (PEM, unencrypted)."""
    from cryptography import x509  # imported here: only tls-init needs it
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "rbee queen"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rbee")])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            # its own CA too, so a client can trust it as a CA file (curl --cacert, the OpenAI client)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_private(path: Path, data: bytes) -> None:
    """Write a file that only its owner can read, made so from the start (no window at 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate (DER), as `AB:CD:…`: what `openssl x509 -fingerprint -sha256` prints."""
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem.decode())).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    for path in (cert_file, key_file):
        if not os.path.isfile(path):
            raise TlsError(f"No such file: {path}. `rbee queen tls-init` makes a certificate and key.")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise TlsError(f"{cert_file} and {key_file} are not a certificate and its key ({exc}).") from None
    return context


def parse_fingerprint(text: str) -> bytes:
    raw = text.strip().replace(":", "").lower()
    if raw.startswith("sha256"):
        raw = raw[6:].lstrip("=")
    try:
        value = bytes.fromhex(raw)
    except ValueError:
        value = b""
    if len(value) != 32:
        raise TlsError(f"{text!r} is not a SHA-256 fingerprint: 64 hex digits, colons allowed, as `rbee queen "
                       "tls-init` prints it.")
    return value


def client_ssl(fingerprint_text: str | None = None, ca_file: str | None = None
               ) -> aiohttp.Fingerprint | ssl.SSLContext | bool:
    """How a client checks an https queen: pinned to a fingerprint, or against a CA file, or the system's
    CAs (True)."""
    if fingerprint_text:
        return aiohttp.Fingerprint(parse_fingerprint(fingerprint_text))
    if ca_file:
        try:
            return ssl.create_default_context(cafile=ca_file)
        except (FileNotFoundError, ssl.SSLError) as exc:
            raise TlsError(f"Cannot use {ca_file} as a CA file: {exc}.") from None
    return True


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
