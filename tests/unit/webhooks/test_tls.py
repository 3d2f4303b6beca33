"""The serving certificate: a usable new pair is put in force, anything else is refused."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certs.issue import new_ca, new_serving_cert
from webhooks import metrics
from webhooks.tls import ServingCertificate

NOW = datetime.datetime.now(datetime.UTC)
CA = new_ca("test CA", NOW, datetime.timedelta(days=2))
GOOD = new_serving_cert(CA, ["localhost"], NOW, datetime.timedelta(days=2))
OTHER = new_serving_cert(CA, ["localhost"], NOW, datetime.timedelta(days=1))


def encrypted(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(b"secret"))


@pytest.fixture
def serving(tmp_path: Path) -> ServingCertificate:
    (tmp_path / "tls.crt").write_bytes(GOOD.cert_pem)
    (tmp_path / "tls.key").write_bytes(GOOD.key_pem)
    return ServingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key", check_interval=0)


def value(name: str) -> float:
    sample = metrics.REGISTRY.get_sample_value(name)
    assert sample is not None
    return sample


@pytest.mark.parametrize(("cert", "key", "problem"), [
    pytest.param(GOOD.cert_pem, OTHER.key_pem, "tls.key is not the key of the certificate",
                 id="mismatched-key"),
    pytest.param(GOOD.cert_pem, GOOD.key_pem[:100], "tls.key is not an unencrypted PEM",
                 id="truncated-key"),
    pytest.param(GOOD.cert_pem[:200], GOOD.key_pem, "tls.crt is not a PEM certificate",
                 id="truncated-cert"),
    pytest.param(GOOD.cert_pem, encrypted(GOOD.key_pem), "tls.key is not an unencrypted PEM",
                 id="encrypted-key"),
    pytest.param(GOOD.cert_pem, None, "No such file", id="missing-key"),
])
def test_an_unusable_pair_is_refused_and_the_last_good_context_stays(
        serving: ServingCertificate, caplog: pytest.LogCaptureFixture,
        cert: bytes, key: bytes | None, problem: str) -> None:
    good = serving.context()
    errors = value("toolforge_admission_certificate_reload_errors_total")
    serving.cert_file.write_bytes(cert)
    if key is None:
        serving.key_file.unlink()
    else:
        serving.key_file.write_bytes(key)
    assert serving.refresh() is False
    assert serving.refresh() is False  # counted and logged once
    assert serving.context() is good
    assert value("toolforge_admission_certificate_reload_errors_total") == errors + 1
    assert value("toolforge_admission_certificate_valid") == 0
    [record] = [r for r in caplog.records if r.getMessage() == "keeping the last good certificate"]
    assert problem in record.fields["error"]  # type: ignore[attr-defined]

    serving.cert_file.write_bytes(OTHER.cert_pem)
    serving.key_file.write_bytes(OTHER.key_pem)
    assert serving.refresh() is True
    assert serving.context() is not good
    assert value("toolforge_admission_certificate_valid") == 1


def test_without_a_usable_pair_at_start_there_is_no_server(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_bytes(GOOD.cert_pem)
    (tmp_path / "tls.key").write_bytes(OTHER.key_pem)
    with pytest.raises(ssl.SSLError, match="no usable certificate"):
        ServingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key")
