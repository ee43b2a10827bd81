"""A tiny PKI for the lab, made with the openssl CLI.

One CA signs the API server's serving certificate and every client certificate (users and
components authenticate by client certificate: CN = user, O = groups). A separate key pair
signs service-account tokens, and a separate front-proxy CA signs the API server's
aggregation-layer client certificate (as kubeadm does). EC P-256 keys: instant to generate,
accepted everywhere.
Serials are random (parallel ``-CAcreateserial`` races and writes an empty certificate).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from secgroups_lab._cmd import run

DAYS = 30
_KEY_ARGS = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Files of the lab PKI, all inside ``directory``."""

    directory: Path
    ca: CertPair
    apiserver: CertPair
    sa_key: Path
    sa_pub: Path
    front_proxy_ca: CertPair
    front_proxy_client: CertPair

    def client(self, name: str) -> CertPair:
        """The client pair ``name`` made by :func:`issue_client_cert`."""
        return CertPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")


def _serial() -> str:
    return "0x" + secrets.token_hex(16)


def _subj(cn: str, orgs: Sequence[str] = ()) -> str:
    for part in (cn, *orgs):
        if "/" in part or "=" in part:
            raise ValueError(f"unsupported character in certificate subject part {part!r}")
    return "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"


def _sign(pki_dir: Path, ca: CertPair, name: str, subj: str, extensions: str) -> CertPair:
    pair = CertPair(pki_dir / f"{name}.crt", pki_dir / f"{name}.key")
    csr = pki_dir / f"{name}.csr"
    ext = pki_dir / f"{name}.ext"
    run(["openssl", "req", *_KEY_ARGS, "-keyout", str(pair.key), "-out", str(csr), "-subj", subj])
    ext.write_text(extensions, encoding="utf-8")
    run(
        [
            "openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca.cert),
            "-CAkey", str(ca.key), "-set_serial", _serial(), "-days", str(DAYS),
            "-sha256", "-extfile", str(ext), "-out", str(pair.cert),
        ]
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    if pair.cert.stat().st_size == 0:
        raise RuntimeError(f"openssl wrote an empty certificate {pair.cert}")
    return pair


def issue_client_cert(pki: Pki, name: str, user: str, groups: Sequence[str] = ()) -> CertPair:
    """A client certificate for ``user`` in ``groups``, written as ``<name>.crt/.key``."""
    return _sign(pki.directory, pki.ca, name, _subj(user, groups), _CLIENT_EXT)


def _make_ca(directory: Path, name: str, cn: str) -> CertPair:
    ca = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    run(
        [
            "openssl", "req", "-x509", *_KEY_ARGS, "-keyout", str(ca.key), "-out", str(ca.cert),
            "-days", str(DAYS), "-sha256", "-subj", f"/CN={cn}", "-set_serial", _serial(),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,digitalSignature,keyCertSign,cRLSign",
        ]
    )  # fmt: skip
    return ca


_CLIENT_EXT = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=clientAuth\n"
)
FRONT_PROXY_CLIENT = "front-proxy-client"


def make_pki(directory: Path, dns_names: Sequence[str], ip_addresses: Sequence[str]) -> Pki:
    """Create the CA, the API server's serving pair (with these SANs) and the SA key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca = _make_ca(directory, "ca", "kube-secgroups-lab-ca")
    sans = [f"DNS:{d}" for d in dns_names] + [f"IP:{ipaddress.ip_address(a)}" for a in ip_addresses]
    apiserver = _sign(
        directory,
        ca,
        "apiserver",
        _subj("kube-apiserver"),
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(sans)}\n",
    )
    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    run(
        [
            "openssl", "genpkey", "-algorithm", "EC",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", str(sa_key),
        ]
    )  # fmt: skip
    run(["openssl", "pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub)])
    front_ca = _make_ca(directory, "front-proxy-ca", "kube-secgroups-lab-front-proxy-ca")
    front_client = _sign(
        directory, front_ca, FRONT_PROXY_CLIENT, _subj(FRONT_PROXY_CLIENT), _CLIENT_EXT
    )
    return Pki(
        directory=directory,
        ca=ca,
        apiserver=apiserver,
        sa_key=sa_key,
        sa_pub=sa_pub,
        front_proxy_ca=front_ca,
        front_proxy_client=front_client,
    )
