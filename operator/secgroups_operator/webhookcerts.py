"""The admission webhook's TLS material when no cert-manager provides it.

A self-signed CA (ECDSA P-256, 10 years) and a serving certificate it signs (1 year)
for the names the API server calls: ``<service>.<namespace>.svc`` (and its longer
forms), and the host of ``--webhook-url`` in the lab. They live in one Secret
(``tls.crt``, ``tls.key``, ``ca.crt``, ``ca.key``) so that every replica serves the same
certificate and the ``caBundle`` never flips between them; the serving certificate is
renewed under the same CA 30 days before it expires, so ``caBundle`` stays valid for
the CA's lifetime. The functions here are pure (PEM bytes in, PEM bytes out);
``secgroups_operator.admission`` stores and loads them.

Neighbours: ``admission`` (the server and the Secret), docs/admission.md.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
# Keys of the Secret: the usual kubernetes.io/tls pair, plus the CA (cert-manager's
# ca.crt; ca.key only in a Secret this operator made, to renew under the same CA).
TLS_CRT, TLS_KEY, CA_CRT, CA_KEY = "tls.crt", "tls.key", "ca.crt", "ca.key"


@dataclass(frozen=True)
class Bundle:
    """PEM-encoded serving certificate and key, and the CA that signed it."""

    cert: bytes
    key: bytes
    ca_cert: bytes
    ca_key: bytes | None = None  # None when someone else (cert-manager) made them

    def secret_data(self) -> dict[str, str]:
        """The Secret's ``data`` (base64 values)."""
        out = {TLS_CRT: self.cert, TLS_KEY: self.key, CA_CRT: self.ca_cert}
        if self.ca_key is not None:
            out[CA_KEY] = self.ca_key
        return {k: base64.b64encode(v).decode() for k, v in out.items()}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str] | None) -> Bundle | None:
        """The bundle in a Secret's ``data``; None if it lacks the serving pair."""
        if not data or TLS_CRT not in data or TLS_KEY not in data:
            return None
        raw = {k: base64.b64decode(v) for k, v in data.items()}
        return cls(raw[TLS_CRT], raw[TLS_KEY], raw.get(CA_CRT, b""), raw.get(CA_KEY))


def service_hosts(namespace: str, name: str) -> list[str]:
    """The DNS names the API server may use for a Service."""
    return [
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}.svc.cluster.local",
        f"{name}.{namespace}",
    ]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_ca(now: dt.datetime, common_name: str = "secgroups-webhook-ca") -> tuple[bytes, bytes]:
    """A new self-signed CA: (certificate PEM, key PEM)."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def issue(
    ca_cert_pem: bytes, ca_key_pem: bytes, hosts: Sequence[str], now: dt.datetime
) -> tuple[bytes, bytes]:
    """A serving certificate for ``hosts`` signed by the CA: (certificate PEM, key PEM)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the webhook CA key is not an ECDSA key")
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVING_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(hosts), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def new_bundle(hosts: Sequence[str], now: dt.datetime) -> Bundle:
    """A new CA and a serving certificate for ``hosts``."""
    ca_cert, ca_key = make_ca(now)
    cert, key = issue(ca_cert, ca_key, hosts, now)
    return Bundle(cert, key, ca_cert, ca_key)


def covers(cert_pem: bytes, hosts: Sequence[str], now: dt.datetime) -> bool:
    """Whether the certificate names every host and is valid for more than RENEW_BEFORE."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    have |= {str(n) for n in san.get_values_for_type(x509.IPAddress)}
    wanted = {str(ipaddress.ip_address(h)) if _is_ip(h) else h for h in hosts}
    return wanted <= have and cert.not_valid_after_utc - now > RENEW_BEFORE


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def renewed(bundle: Bundle | None, hosts: Sequence[str], now: dt.datetime) -> Bundle | None:
    """The bundle to store, or None if ``bundle`` serves ``hosts`` as it is.

    A bundle this operator made (it has the CA key) is renewed under the same CA, so the
    ``caBundle`` stays valid; one without a usable CA gets a new CA.
    """
    if bundle is not None and covers(bundle.cert, hosts, now):
        return None
    if bundle is not None and bundle.ca_key is not None and bundle.ca_cert:
        try:
            ca = x509.load_pem_x509_certificate(bundle.ca_cert)
            if ca.not_valid_after_utc - now > dt.timedelta(days=SERVING_DAYS):
                cert, key = issue(bundle.ca_cert, bundle.ca_key, hosts, now)
                return Bundle(cert, key, bundle.ca_cert, bundle.ca_key)
        except ValueError:
            pass  # an unreadable CA: start over
    return new_bundle(hosts, now)
