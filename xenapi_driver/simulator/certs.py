"""A self-signed certificate for the simulator's optional HTTPS.

Why: the driver talks HTTPS to real pools (``ca_file``/``insecure``), so
the simulator can serve TLS too.  Uses ``cryptography`` when installed,
else the ``openssl`` command.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import subprocess
from pathlib import Path


def ensure_certificate(directory: Path) -> tuple[Path, Path]:
    """Create (once) ``cert.pem`` and ``key.pem`` valid for 127.0.0.0/8 names."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = directory / "cert.pem"
    key = directory / "key.pem"
    if cert.exists() and key.exists():
        return cert, key
    try:
        _with_cryptography(cert, key)
    except ImportError:
        _with_openssl(cert, key)
    key.chmod(0o600)
    return cert, key


def _with_cryptography(cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xapi-simulator")])
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.DNSName("localhost")] + [
        x509.IPAddress(ipaddress.IPv4Address(f"127.0.0.{i}")) for i in range(1, 64)
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _with_openssl(cert_path: Path, key_path: Path) -> None:
    exe = shutil.which("openssl")
    if not exe:
        raise RuntimeError("HTTPS needs the 'cryptography' package or the openssl command")
    sans = ",".join(["DNS:localhost"] + [f"IP:127.0.0.{i}" for i in range(1, 64)])
    subprocess.run(
        [exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key_path), "-out", str(cert_path), "-days", "3650", "-subj", "/CN=xapi-simulator",
         "-addext", f"subjectAltName={sans}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def server_context(directory: Path) -> ssl.SSLContext:
    cert, key = ensure_certificate(directory)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx
