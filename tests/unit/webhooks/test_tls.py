"""The serving certificate: a usable new pair is put in force, anything else is refused."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client import REGISTRY

from certs.issue import new_ca, new_serving_cert
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
    sample = REGISTRY.get_sample_value(name)
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


# --- the last good pair, shared by the workers of one server ---------------------------------

EXPIRED = new_serving_cert(CA, ["localhost"], NOW - datetime.timedelta(days=3),
                           datetime.timedelta(days=1))


def fingerprint(context: ssl.SSLContext) -> str:
    """The SHA-256 of the certificate a handshake with this server context presents."""
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server = context.wrap_bio(server_in, server_out, server_side=True)
    peer = client.wrap_bio(client_in, client_out, server_hostname="localhost")
    for _ in range(10):
        for side in (peer, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    der = peer.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def sha256(cert_pem: bytes) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem.decode())).hexdigest()


def mount(directory: Path, cert: bytes | None, key: bytes | None) -> None:
    for name, data in (("tls.crt", cert), ("tls.key", key)):
        if data is None:
            (directory / name).unlink(missing_ok=True)
        else:
            (directory / name).write_bytes(data)


def test_each_pair_put_in_force_is_saved_for_the_other_workers_owner_only(
        tmp_path: Path) -> None:
    mount(tmp_path, GOOD.cert_pem, GOOD.key_pem)
    shared = tmp_path / "state" / "last-good-certificate.pem"
    shared.parent.mkdir()
    serving = ServingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key", check_interval=0,
                                 last_good=shared)
    assert shared.read_bytes() == GOOD.cert_pem + GOOD.key_pem
    assert shared.stat().st_mode & 0o777 == 0o600
    mount(tmp_path, OTHER.cert_pem, GOOD.key_pem)  # refused: the saved pair stays
    assert serving.refresh() is False
    assert shared.read_bytes() == GOOD.cert_pem + GOOD.key_pem
    mount(tmp_path, OTHER.cert_pem, OTHER.key_pem)
    assert serving.refresh() is True
    assert shared.read_bytes() == OTHER.cert_pem + OTHER.key_pem
    assert shared.stat().st_mode & 0o777 == 0o600
    assert sorted(path.name for path in shared.parent.iterdir()) == [shared.name]


@pytest.mark.parametrize(("cert", "key"), [
    pytest.param(GOOD.cert_pem, OTHER.key_pem, id="mismatched-key"),
    pytest.param(GOOD.cert_pem, GOOD.key_pem[:100], id="truncated-key"),
    pytest.param(GOOD.cert_pem, None, id="missing-key"),
    pytest.param(None, GOOD.key_pem, id="missing-cert"),
])
def test_a_worker_started_while_the_files_are_bad_serves_the_last_good_pair(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        cert: bytes | None, key: bytes | None) -> None:
    shared = tmp_path / "last-good-certificate.pem"
    mount(tmp_path, OTHER.cert_pem, OTHER.key_pem)
    ServingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key", last_good=shared)
    mount(tmp_path, cert, key)

    late = ServingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key", check_interval=0,
                              last_good=shared)
    assert fingerprint(late.context()) == sha256(OTHER.cert_pem)
    assert late.not_after == OTHER.certificate.not_valid_after_utc.timestamp()
    assert value("toolforge_admission_certificate_valid") == 0
    assert value("toolforge_admission_certificate_not_after_timestamp_seconds") == late.not_after
    [record] = [r for r in caplog.records if r.getMessage().startswith(
        "serving the last good certificate of this server")]
    fields = record.fields  # type: ignore[attr-defined]
    assert record.levelname == "WARNING"
    assert fields["cert_file"] == str(tmp_path / "tls.crt")
    assert fields["key_file"] == str(tmp_path / "tls.key")
    # The refusal's own error (unreadable files, or a pair that does not match).
    assert fields["error"].startswith(("certificate files refused:", "cannot read certificate"))
    assert fields["serving_not_after"] == int(late.not_after)
    assert fields["sha256"] == sha256(OTHER.cert_pem)

    # It keeps checking the files: a good pair is put in force, and saved.
    mount(tmp_path, GOOD.cert_pem, GOOD.key_pem)
    assert late.refresh() is True
    assert fingerprint(late.context()) == sha256(GOOD.cert_pem)
    assert value("toolforge_admission_certificate_valid") == 1
    assert shared.read_bytes() == GOOD.cert_pem + GOOD.key_pem


def test_an_expired_last_good_pair_is_not_served(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shared = tmp_path / "last-good-certificate.pem"
    shared.write_bytes(EXPIRED.cert_pem + EXPIRED.key_pem)
    mount(tmp_path, GOOD.cert_pem, OTHER.key_pem)
    with pytest.raises(ssl.SSLError, match="no usable certificate"):
        ServingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key", last_good=shared)
    [record] = [r for r in caplog.records if r.getMessage() ==
                "not serving the last good certificate: it has expired"]
    assert record.levelname == "ERROR"
    assert record.fields["last_good_not_after"] == int(  # type: ignore[attr-defined]
        EXPIRED.certificate.not_valid_after_utc.timestamp())
    assert "is not the key of" in record.fields["error"]  # type: ignore[attr-defined]


def test_a_damaged_last_good_file_is_not_served(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shared = tmp_path / "last-good-certificate.pem"
    shared.write_bytes(GOOD.cert_pem + OTHER.key_pem)
    mount(tmp_path, GOOD.cert_pem, None)
    with pytest.raises(ssl.SSLError, match="no usable certificate"):
        ServingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key", last_good=shared)
    assert any(r.getMessage() == "not serving the last good certificate: it is not usable"
               for r in caplog.records)


def test_a_new_server_with_bad_files_and_no_last_good_pair_serves_nothing(
        tmp_path: Path) -> None:
    mount(tmp_path, GOOD.cert_pem, OTHER.key_pem)
    shared = tmp_path / "last-good-certificate.pem"
    with pytest.raises(ssl.SSLError, match="no usable certificate"):
        ServingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key", last_good=shared)
    assert not shared.exists()
