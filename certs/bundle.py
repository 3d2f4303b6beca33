"""CA bundles: the PEM lists the API server trusts. Parse, compare and encode, all pure.

A bundle is compared as a set of certificates (by SHA-256 of the DER encoding), never as text:
re-encoding, reordering or a trailing newline is not a change and causes no write.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization


class BundleError(ValueError):
    """The bytes are not a list of PEM certificates."""


def fingerprint(cert: x509.Certificate) -> str:
    """`sha256:<hex>` of the certificate's DER encoding."""
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def parse_bundle(pem: bytes) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM bundle, in order, duplicates dropped; empty input is empty."""
    if not pem.strip():
        return ()
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise BundleError(f"not a PEM certificate bundle: {e}") from e
    return unique(certs)


def unique(certs: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """The certificates with duplicates removed, first occurrence kept."""
    seen: set[str] = set()
    out: list[x509.Certificate] = []
    for cert in certs:
        fp = fingerprint(cert)
        if fp not in seen:
            seen.add(fp)
            out.append(cert)
    return tuple(out)


def encode_bundle(certs: Iterable[x509.Certificate]) -> bytes:
    """PEM text of the certificates, duplicates dropped."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in unique(certs))


def fingerprints(certs: Iterable[x509.Certificate]) -> frozenset[str]:
    """The set of fingerprints: what two bundles are compared by."""
    return frozenset(fingerprint(c) for c in certs)


def same_bundle(a: Iterable[x509.Certificate], b: Iterable[x509.Certificate]) -> bool:
    """True if both hold the same certificates, in any order."""
    return fingerprints(a) == fingerprints(b)


def contains(bundle: Iterable[x509.Certificate], cert: x509.Certificate) -> bool:
    """True if the certificate is in the bundle."""
    return fingerprint(cert) in fingerprints(bundle)


def is_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if `issuer`'s key made `cert`'s signature and the names chain."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def issuer_in(cert: x509.Certificate, bundle: Iterable[x509.Certificate]
              ) -> x509.Certificate | None:
    """The bundle certificate that signed `cert`, if any."""
    for ca in bundle:
        if is_signed_by(cert, ca):
            return ca
    return None
