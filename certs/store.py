"""Read and write the Secrets and webhook configurations, every write with a precondition.

`Store` is what rotation needs; `KubernetesStore` implements it with the kubernetes client and
raw JSON (the client's models drop fields they do not know, and a replace would then erase
them). Creates fail on AlreadyExists and replaces carry the resourceVersion that was read, so a
concurrent writer makes the call raise `ConflictError` and the caller reads and decides again.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from certs.state import Secret, Settings, WebhookConfiguration, WebhookEntry, WebhookKind


class StoreError(Exception):
    """The API server refused or could not be reached; rotation cannot continue."""


class ConflictError(StoreError):
    """Someone else wrote first (409): read again and decide again."""


class Store(Protocol):
    """The reads and writes of one rotation run, in one namespace."""

    def read_secret(self, name: str) -> Secret | None:
        """The Secret, or None if it does not exist."""

    def create_secret(self, secret: Secret) -> None:
        """Create it; ConflictError if it already exists."""

    def replace_secret(self, secret: Secret) -> None:
        """Replace it if unchanged since `secret.resource_version` was read; else ConflictError."""

    def list_webhook_configurations(self) -> tuple[WebhookConfiguration, ...]:
        """The suite's webhook configurations (found by label), with the bundles that are ours."""

    def replace_ca_bundles(self, configuration: WebhookConfiguration, ca_bundle: bytes) -> None:
        """Set the caBundle of each of its entries, if unchanged since read; else ConflictError."""


def entry_is_ours(webhook: dict[str, Any], settings: Settings) -> bool:
    """A webhook that calls our Service, or a URL (dev and test setups have no Service)."""
    client_config = webhook.get("clientConfig") or {}
    service = client_config.get("service")
    if service is None:
        return "url" in client_config
    return bool(service.get("name") == settings.service
                and service.get("namespace") == settings.namespace)


def configuration_from_json(kind: WebhookKind, obj: dict[str, Any], settings: Settings
                            ) -> WebhookConfiguration:
    """The plain-data view of a webhook configuration as the API returns it."""
    entries = tuple(
        WebhookEntry(w.get("name", ""),
                     base64.b64decode((w.get("clientConfig") or {}).get("caBundle") or ""))
        for w in obj.get("webhooks") or [] if entry_is_ours(w, settings))
    meta = obj.get("metadata") or {}
    return WebhookConfiguration(kind, meta["name"], meta["resourceVersion"], entries)


def set_ca_bundles(obj: dict[str, Any], ca_bundle: bytes, settings: Settings) -> dict[str, Any]:
    """A copy of the configuration with each of our entries' caBundle set."""
    out: dict[str, Any] = json.loads(json.dumps(obj))
    encoded = base64.b64encode(ca_bundle).decode()
    for webhook in out.get("webhooks") or []:
        if entry_is_ours(webhook, settings):
            webhook.setdefault("clientConfig", {})["caBundle"] = encoded
    return out


def secret_from_json(obj: dict[str, Any]) -> Secret:
    meta = obj.get("metadata") or {}
    return Secret(
        name=meta["name"],
        data={k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()},
        annotations=dict(meta.get("annotations") or {}),
        labels=dict(meta.get("labels") or {}),
        type=obj.get("type", "Opaque"),
        resource_version=meta.get("resourceVersion"),
    )


def secret_to_json(secret: Secret, namespace: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": secret.name, "namespace": namespace,
                            "annotations": dict(secret.annotations),
                            "labels": dict(secret.labels)}
    if secret.resource_version is not None:
        meta["resourceVersion"] = secret.resource_version
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": secret.type,
            "data": {k: base64.b64encode(v).decode() for k, v in secret.data.items()}}


class KubernetesStore:
    """The Store on a real API server."""

    def __init__(self, api_client: Any, settings: Settings) -> None:
        self.settings = settings
        self.core = client.CoreV1Api(api_client)
        self.admission = client.AdmissionregistrationV1Api(api_client)

    def read_secret(self, name: str) -> Secret | None:
        obj = self._call(self.core.read_namespaced_secret, name, self.settings.namespace,
                         missing_ok=True)
        return None if obj is None else secret_from_json(obj)

    def create_secret(self, secret: Secret) -> None:
        body = secret_to_json(secret, self.settings.namespace)
        body["metadata"].pop("resourceVersion", None)
        self._call(self.core.create_namespaced_secret, self.settings.namespace, body)

    def replace_secret(self, secret: Secret) -> None:
        if secret.resource_version is None:
            raise ValueError("replace needs the resourceVersion that was read")
        self._call(self.core.replace_namespaced_secret, secret.name, self.settings.namespace,
                   secret_to_json(secret, self.settings.namespace))

    def list_webhook_configurations(self) -> tuple[WebhookConfiguration, ...]:
        out: list[WebhookConfiguration] = []
        for kind, list_fn in (("validating", self.admission.list_validating_webhook_configuration),
                              ("mutating", self.admission.list_mutating_webhook_configuration)):
            result = self._call(list_fn, label_selector=self.settings.webhook_label)
            assert result is not None
            for item in result.get("items") or []:
                out.append(configuration_from_json(kind, item, self.settings))  # type: ignore[arg-type]
        return tuple(sorted(out, key=lambda c: (c.kind, c.name)))

    def replace_ca_bundles(self, configuration: WebhookConfiguration, ca_bundle: bytes) -> None:
        read: Any
        replace: Any
        if configuration.kind == "validating":
            read = self.admission.read_validating_webhook_configuration
            replace = self.admission.replace_validating_webhook_configuration
        else:
            read = self.admission.read_mutating_webhook_configuration
            replace = self.admission.replace_mutating_webhook_configuration
        obj = self._call(read, configuration.name)
        assert obj is not None
        # Replace the object as read, with the resourceVersion from the gather the decision was
        # made on: if anything changed since, the API server answers 409.
        body = set_ca_bundles(obj, ca_bundle, self.settings)
        body["metadata"]["resourceVersion"] = configuration.resource_version
        self._call(replace, configuration.name, body)

    @staticmethod
    def _call(fn: Any, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        try:
            response = fn(*args, _preload_content=False, **kwargs)
        except ApiException as e:
            if e.status == 404 and missing_ok:
                return None
            if e.status == 409:
                raise ConflictError(f"{fn.__name__}: conflict: {_reason(e)}") from e
            raise StoreError(f"{fn.__name__}: HTTP {e.status}: {_reason(e)}") from e
        except Exception as e:  # connection refused, TLS, timeouts: the job cannot work
            raise StoreError(f"{fn.__name__}: {type(e).__name__}: {e}") from e
        return json.loads(response.data)


def _reason(e: Any) -> str:
    try:
        return str(json.loads(e.body).get("message") or e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(e.reason)
