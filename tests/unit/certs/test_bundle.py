"""certs.bundle: PEM bundles compared as sets, merged and pruned."""

from __future__ import annotations

import pytest

from certs import bundle
from certs.bundle import BundleError
from tests.unit.certs.fakes import make_ca, make_leaf


@pytest.fixture(scope="module")
def cas():  # three distinct CAs
    return [make_ca(name=f"ca-{i}") for i in range(3)]


def test_parse_returns_certificates_in_order_without_duplicates(cas):
    pem = cas[0].cert_pem + cas[1].cert_pem + cas[0].cert_pem
    parsed = bundle.parse_bundle(pem)
    assert [bundle.fingerprint(c) for c in parsed] == [
        bundle.fingerprint(cas[0].certificate), bundle.fingerprint(cas[1].certificate)]


@pytest.mark.parametrize("pem", [b"", b"\n", b"  \n\t"], ids=["empty", "newline", "blank"])
def test_empty_bundle_is_empty(pem):
    assert bundle.parse_bundle(pem) == ()


@pytest.mark.parametrize("pem", [
    pytest.param(b"garbage", id="text"),
    pytest.param(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", id="bad-der"),
])
def test_garbage_is_a_bundle_error(pem):
    with pytest.raises(BundleError):
        bundle.parse_bundle(pem)


def test_bundles_compare_as_sets_not_text(cas):
    a = bundle.parse_bundle(cas[0].cert_pem + cas[1].cert_pem)
    b = bundle.parse_bundle(cas[1].cert_pem + b"\n" + cas[0].cert_pem)
    assert bundle.same_bundle(a, b)
    assert not bundle.same_bundle(a, a[:1])


def test_encode_round_trips(cas):
    certs = [c.certificate for c in cas]
    assert bundle.same_bundle(bundle.parse_bundle(bundle.encode_bundle(certs)), certs)


def test_issuer_in_finds_the_signing_ca_by_signature_not_by_name(cas):
    impostor = make_ca(name="ca-1")  # same subject as cas[1], different key
    leaf = make_leaf(cas[1]).certificate
    assert bundle.issuer_in(leaf, [impostor.certificate]) is None
    found = bundle.issuer_in(leaf, [cas[0].certificate, impostor.certificate,
                                    cas[1].certificate])
    assert found is not None
    assert bundle.fingerprint(found) == bundle.fingerprint(cas[1].certificate)
