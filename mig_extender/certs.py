"""``mig-extender certs``: a throw-away CA and a webhook serving certificate for local runs and tests.

In a cluster prefer cert-manager (manifests/overlays/cert-manager); this is for a plain Secret and for
tests. Keys are written 0600 and never printed; only the CA bundle (public) goes to stdout.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def dns_names(service: str, namespace: str) -> list[str]:
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local",
            "localhost"]


def generate(out: Path, service: str = "mig-extender-webhook", namespace: str = "mig-extender",
             days: int = 365, ips: tuple[str, ...] = ("127.0.0.1",)) -> str:
    """Write ca.crt, tls.crt and tls.key into ``out``; return the base64 CA bundle for caBundle."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key, leaf_key = _key(), _key()
    ca = (x509.CertificateBuilder().subject_name(_name("mig-extender-ca")).issuer_name(_name("mig-extender-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names(service, namespace)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    leaf = (x509.CertificateBuilder().subject_name(_name(f"{service}.{namespace}.svc")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    (out / "ca.crt").write_bytes(ca_pem)
    (out / "tls.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path = out / "tls.key"
    key_path.write_bytes(_pem_key(leaf_key))
    os.chmod(key_path, 0o600)
    return base64.b64encode(ca_pem).decode()
