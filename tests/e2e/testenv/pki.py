"""A throw-away certificate authority for one test cluster.

It signs the serving certificate that kube-apiserver, kube-controller-manager, kube-scheduler (and any
test server that wants one, e.g. an admission webhook) present on 127.0.0.1, and client certificates
for arbitrary users: kube-apiserver trusts the CA as `--client-ca-file`, so a test can act as any
user and groups at any time, which a static token file (read once at start) cannot offer.

ECDSA P-256 keys: generating them takes microseconds where RSA-2048 takes tens of milliseconds, and
every Kubernetes component and the service-account token signer accept them.

Must not: touch the network or start processes.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=2)  # a cluster lives minutes; two days survives clock skew and long debug sessions
LOOPBACK_SANS = ("127.0.0.1", "localhost")


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    return x509.Name(attrs)


class CertificateAuthority:
    """The CA files live in `directory`; `load` reopens them from another process."""

    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.directory = directory
        self._key = key
        self._cert = cert

    @property
    def cert_file(self) -> Path:
        return self.directory / "ca.crt"

    @classmethod
    def create(cls, directory: Path, common_name: str = "mig-e2e-ca") -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        ca = cls(directory, key, cert)
        _write_key(directory / "ca.key", key)
        ca.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return ca

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{directory / 'ca.key'} is not an EC key")
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        return cls(directory, key, cert)

    def issue(
        self,
        stem: str,
        common_name: str,
        *,
        organizations: Iterable[str] = (),
        server_names: Iterable[str] = (),
        client: bool = False,
    ) -> tuple[Path, Path]:
        """Write `<stem>.crt`/`<stem>.key` and return their paths.

        server_names (IPs or DNS names) make it a serving certificate; client=True a client one whose
        CN is the user name and whose O entries are its groups (how kube-apiserver reads them).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        sans: list[x509.GeneralName] = []
        for san in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                sans.append(x509.DNSName(san))
        if sans:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        crt_path, key_path = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return crt_path, key_path


def write_signing_keypair(directory: Path, stem: str = "sa") -> tuple[Path, Path]:
    """The service-account token signing key (private) and verification key (public)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / f"{stem}.key", directory / f"{stem}.pub"
    _write_key(private, key)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public
