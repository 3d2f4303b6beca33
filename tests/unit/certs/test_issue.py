"""certs.issue: the CA and serving certificates, checked by parsing them."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs import bundle
from certs.issue import BACKDATE
from tests.unit.certs.fakes import SETTINGS, T0, make_ca, make_leaf


def test_ca_is_a_self_signed_ca_limited_to_signing_leaves():
    ca = make_ca().certificate
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert bundle.is_signed_by(ca, ca)


def test_validity_is_backdated_and_lasts_the_lifetime():
    ca = make_ca(days=365).certificate
    assert ca.not_valid_before_utc == T0 - BACKDATE
    assert ca.not_valid_after_utc == T0 + datetime.timedelta(days=365)


def test_serving_certificate_names_the_service_and_is_not_a_ca():
    ca = make_ca()
    leaf = make_leaf(ca).certificate
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "toolforge-admission", "toolforge-admission.toolforge-admission",
        "toolforge-admission.toolforge-admission.svc"]
    assert list(SETTINGS.dns_names) == san.get_values_for_type(x509.DNSName)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_serving_certificate_chains_to_its_ca_in_a_bundle():
    ca, other = make_ca(name="a"), make_ca(name="b")
    leaf = make_leaf(ca).certificate
    found = bundle.issuer_in(leaf, bundle.parse_bundle(other.cert_pem + ca.cert_pem))
    assert found is not None
    assert bundle.fingerprint(found) == bundle.fingerprint(ca.certificate)
    # And a real path validation, as a TLS client does.
    store = x509.verification.Store([ca.certificate])
    verifier = (x509.verification.PolicyBuilder().store(store)
                .time(T0 + datetime.timedelta(days=1))
                .build_server_verifier(x509.DNSName("toolforge-admission.toolforge-admission.svc")))
    chain = verifier.verify(leaf, [])
    assert chain[-1] == ca.certificate


def test_serving_certificate_never_outlives_its_ca():
    ca = make_ca(days=30)
    leaf = make_leaf(ca, days=90).certificate
    assert leaf.not_valid_after_utc == ca.certificate.not_valid_after_utc


def test_key_matches_certificate():
    pair = make_leaf(make_ca())
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert (key.public_key().public_bytes(serialization.Encoding.PEM, spki)
            == pair.certificate.public_key().public_bytes(serialization.Encoding.PEM, spki))
