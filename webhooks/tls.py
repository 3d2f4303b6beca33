"""The server's TLS context, rebuilt when the mounted certificate changes.

The rotation job replaces `tls.crt` and `tls.key` in the Secret; the kubelet swaps them into the
pod together. gunicorn asks for a context on every new connection, so a renewed certificate is
served from the next connection on, without a restart and without touching connections that are
open. Files that do not form a usable pair (a key that does not match, a half-written file) are
refused: the last good context keeps serving, and the refusal is logged and counted.

Each pair put in force is also saved, cert and key in one file (`mounts.save_last_good`), where
the server's workers share it: a worker that starts (or is restarted) while the files are
refused serves that last good pair instead of failing every connection, and goes on checking the
files. A saved pair that has expired is not served: no certificate is better than one every
client refuses, and the log then says why the worker has none.

With a client CA (mutual TLS), a client certificate is asked for but not demanded: a certificate
that is presented must verify against that CA or the handshake fails. The same context serves
the status port, where the kubelet and Prometheus connect without one; on the review port the
worker closes a connection without one right after the handshake (webhooks.worker), and the
admission paths also refuse any connection that `verified_client_names` finds no name on.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from webhooks import metrics, mounts

logger = logging.getLogger(__name__)

# TLS 1.2 needs an explicit list to keep out CBC, RSA key exchange and SHA-1 suites; TLS 1.3
# suites are all strong and are not affected by this setting.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class ServingCertificate:
    """Hands out an SSLContext for a certificate and key on disk, reloading them on change."""

    def __init__(self, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str],
                 *, check_interval: float = 1.0, client_ca_file: str | None = None,
                 last_good: str | os.PathLike[str] | None = None) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.client_ca_file = client_ca_file
        self.last_good = Path(last_good) if last_good else None
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._checked = 0.0
        self._identity: mounts.Identity | None = None
        self._context: ssl.SSLContext | None = None
        self._error = ""
        self.not_after: float | None = None
        self.refresh()
        if self._context is None:
            self._serve_last_good()
        if self._context is None:
            raise ssl.SSLError(f"no usable certificate in {self.cert_file} and {self.key_file}")

    def context(self) -> ssl.SSLContext:
        """The context for a new connection: at most one file check per interval."""
        if time.monotonic() - self._checked >= self.check_interval:
            self.refresh()
        assert self._context is not None
        return self._context

    def refresh(self) -> bool:
        """Rebuild the context if the files changed and form a valid pair; True if rebuilt."""
        with self._lock:
            self._checked = time.monotonic()
            try:
                identity = mounts.identity(*self._files())
            except OSError as error:
                return self._refuse(None, f"cannot read certificate files: {error}")
            if identity == self._identity:
                return False
            try:
                cert, pem = _check_pair(self.cert_file, self.key_file)
                context = _server_context(self.cert_file, self.key_file, self.client_ca_file)
            except (OSError, ssl.SSLError, ValueError) as error:
                return self._refuse(identity, f"certificate files refused: {error}")
            not_after = cert.not_valid_after_utc.timestamp()
            self._context, self._identity, self.not_after = context, identity, not_after
            self._error = ""
            if self.last_good is not None:
                mounts.save_last_good(self.last_good, pem, "certificate")
            metrics.CERTIFICATE_NOT_AFTER.set(not_after)
            metrics.CERTIFICATE_VALID.set(1)
            logger.info("serving certificate loaded", extra={"fields": {
                "cert_file": str(self.cert_file), "not_after": int(not_after),
                "sha256": cert.fingerprint(hashes.SHA256()).hex()}})
            return True

    def _files(self) -> list[Path]:
        # The client CA is a mounted ConfigMap: a CA rollover reaches new connections like a
        # renewed serving certificate does.
        files = [self.cert_file, self.key_file]
        return [*files, Path(self.client_ca_file)] if self.client_ca_file else files

    def _refuse(self, identity: mounts.Identity | None, error: str) -> bool:
        # Log and count a bad pair once, not on every check; the gauge stays 0 while it lasts.
        if identity != self._identity or self._context is None:
            metrics.CERTIFICATE_RELOAD_ERRORS.inc()
            logger.error("keeping the last good certificate", extra={"fields": {
                "cert_file": str(self.cert_file), "key_file": str(self.key_file),
                "error": error,
                "serving_not_after": int(self.not_after) if self.not_after else None}})
        metrics.CERTIFICATE_VALID.set(0)
        self._identity, self._error = identity, error
        return False

    def _serve_last_good(self) -> None:
        """At start, with the files refused: the pair that this server's workers last put in
        force, unless it has expired. The files are still checked as usual afterwards."""
        if self.last_good is None or not self.last_good.exists():
            return
        fields: dict[str, object] = {
            "cert_file": str(self.cert_file), "key_file": str(self.key_file),
            "error": self._error, "last_good": str(self.last_good)}
        try:
            cert, _ = _check_pair(self.last_good, self.last_good)
            not_after = cert.not_valid_after_utc.timestamp()
            if cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
                logger.error("not serving the last good certificate: it has expired",
                             extra={"fields": {**fields, "last_good_not_after": int(not_after)}})
                return
            context = _server_context(self.last_good, self.last_good, self.client_ca_file)
        except (OSError, ssl.SSLError, ValueError) as error:
            logger.error("not serving the last good certificate: it is not usable",
                         extra={"fields": {**fields, "last_good_error": str(error)}})
            return
        self._context, self.not_after = context, not_after
        metrics.CERTIFICATE_NOT_AFTER.set(not_after)
        # certificate_valid stays 0: the files on disk are refused.
        logger.warning("serving the last good certificate of this server while the files are "
                       "refused", extra={"fields": {
                           **fields, "serving_not_after": int(not_after),
                           "sha256": cert.fingerprint(hashes.SHA256()).hex()}})


def _check_pair(cert_file: Path, key_file: Path) -> tuple[x509.Certificate, bytes]:
    """The certificate, if the key is its key, with both files' PEM in one (as the last good
    pair is saved); ValueError saying which file is not usable.

    ssl's own errors ("PEM lib") do not say which file is wrong. Reading the key here first also
    keeps an encrypted key from reaching OpenSSL, which would prompt for its passphrase.
    """
    cert_pem = cert_file.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ValueError(f"{cert_file} is not a PEM certificate") from None
    key_pem = cert_pem if key_file == cert_file else key_file.read_bytes()
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{key_file} is not an unencrypted PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise ValueError(f"{key_file} is not the key of the certificate in {cert_file}")
    if key_file == cert_file:
        return cert, cert_pem
    # The chain as served (load_cert_chain reads certificates up to the key), then the key.
    return cert, cert_pem.rstrip(b"\n") + b"\n" + key_pem


def _server_context(cert_file: Path, key_file: Path, client_ca_file: str | None,
                    ) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_ciphers(TLS12_CIPHERS)
    # The API server offers h2 to loopback URLs; gunicorn's h2 costs more than HTTP/1.1 here.
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        # Not CERT_REQUIRED: the context also serves the status port, where kubelet probes and
        # Prometheus connect without a client certificate. A certificate that is sent is still
        # verified (a wrong one fails the handshake); the review port closes a connection
        # without one (webhooks.worker), and the admission paths insist on one (webhooks.app).
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(client_ca_file)
    return context


def verified_client_names(connection: object) -> tuple[str, ...] | None:
    """The subject CN and DNS names of the client certificate that the TLS handshake verified
    against the client CA; None when the connection carries no verified certificate."""
    getpeercert = getattr(connection, "getpeercert", None)
    if getpeercert is None:  # not a TLS connection
        return None
    try:
        certificate = getpeercert()
    except (OSError, ValueError):  # closed, or the handshake never finished
        return None
    # None: no certificate was sent; {}: one was sent but not verified (no client CA).
    if not certificate:
        return None
    names = [value for attributes in certificate.get("subject", ())
             for key, value in attributes if key == "commonName"]
    names += [value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"]
    return tuple(names)
