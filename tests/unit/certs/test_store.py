"""certs.store: the kubernetes-client store, against fake API objects (no cluster)."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from certs.state import Secret
from certs.store import ConflictError, KubernetesStore, StoreError
from tests.unit.certs.fakes import SETTINGS, webhook_json


def response(obj):
    return SimpleNamespace(data=json.dumps(obj).encode())


def api_error(status, message="nope"):
    e = ApiException(status=status, reason="Reason")
    e.body = json.dumps({"message": message})
    return e


class FakeApi:
    """Records calls; answers from `replies` by method name (an exception is raised)."""

    def __init__(self, **replies):
        self.replies = replies
        self.calls = []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            assert kwargs.pop("_preload_content") is False  # raw JSON, no lossy models
            self.calls.append((name, args, kwargs))
            reply = self.replies[name]
            if isinstance(reply, Exception):
                raise reply
            return response(reply)
        call.__name__ = name
        return call


def make(core=None, admission=None):
    store = KubernetesStore(ApiClient(), SETTINGS)
    # The fakes stand in for the generated API classes, by their method names.
    store.core = core or FakeApi()  # type: ignore[assignment]
    store.admission = admission or FakeApi()  # type: ignore[assignment]
    return store


def test_missing_secret_reads_as_none():
    store = make(core=FakeApi(read_namespaced_secret=api_error(404)))
    assert store.read_secret("webhook-ca") is None


def test_secret_data_is_decoded_and_resource_version_kept():
    obj = {"metadata": {"name": "webhook-ca", "resourceVersion": "42",
                        "annotations": {"a": "b"}},
           "type": "Opaque", "data": {"ca.crt": base64.b64encode(b"PEM").decode()}}
    secret = make(core=FakeApi(read_namespaced_secret=obj)).read_secret("webhook-ca")
    assert secret == Secret("webhook-ca", {"ca.crt": b"PEM"}, {"a": "b"}, {}, "Opaque", "42")


@pytest.mark.parametrize(("status", "error"), [
    pytest.param(409, ConflictError, id="already-exists-is-a-conflict"),
    pytest.param(403, StoreError, id="forbidden-stops-the-run"),
])
def test_create_errors(status, error):
    store = make(core=FakeApi(create_namespaced_secret=api_error(status, "secrets is forbidden")))
    with pytest.raises(error, match="forbidden" if status == 403 else "conflict"):
        store.create_secret(Secret("webhook-certs", {}))


def test_replace_sends_the_resource_version_that_was_read():
    core = FakeApi(replace_namespaced_secret={})
    make(core=core).replace_secret(Secret("webhook-ca", {"ca.crt": b"x"}, resource_version="7"))
    name, args, _ = core.calls[0]
    assert name == "replace_namespaced_secret"
    assert args[2]["metadata"]["resourceVersion"] == "7"
    assert args[2]["data"] == {"ca.crt": base64.b64encode(b"x").decode()}


def test_replace_without_resource_version_is_a_bug():
    with pytest.raises(ValueError, match="resourceVersion"):
        make().replace_secret(Secret("webhook-ca", {}))


def test_webhook_configurations_are_found_by_label_with_only_our_entries():
    ours = webhook_json("toolforge-admission-pods", entries=2, ca_bundle=b"CA")
    ours["webhooks"].append(webhook_json("x", service="other", entries=1)["webhooks"][0])
    admission = FakeApi(list_validating_webhook_configuration={"items": [ours]},
                        list_mutating_webhook_configuration={"items": []})
    configs = make(admission=admission).list_webhook_configurations()
    assert [c.label for c in configs] == ["validatingwebhookconfiguration/toolforge-admission-pods"]
    assert [e.ca_bundle for e in configs[0].entries] == [b"CA", b"CA"]
    assert admission.calls[0][2]["label_selector"] == SETTINGS.webhook_label


def test_cabundle_replace_keeps_other_fields_and_the_read_resource_version():
    obj = webhook_json("toolforge-admission-pods", entries=1)
    obj["webhooks"].append(webhook_json("x", service="other", entries=1)["webhooks"][0])
    admission = FakeApi(list_validating_webhook_configuration={"items": [obj]},
                        list_mutating_webhook_configuration={"items": []})
    store = make(admission=admission)
    config = store.list_webhook_configurations()[0]
    newer = json.loads(json.dumps(obj))
    newer["metadata"]["resourceVersion"] = "2"  # changed since the gather
    admission.replies |= {"read_validating_webhook_configuration": newer,
                          "replace_validating_webhook_configuration": {}}
    store.replace_ca_bundles(config, b"NEW")
    _, (name, body), _ = admission.calls[-1]
    assert name == "toolforge-admission-pods"
    assert body["metadata"]["resourceVersion"] == "1"  # the API server will answer 409
    assert body["webhooks"][0]["clientConfig"]["caBundle"] == base64.b64encode(b"NEW").decode()
    assert body["webhooks"][0]["matchConditions"] == obj["webhooks"][0]["matchConditions"]
    assert body["webhooks"][1]["clientConfig"]["caBundle"] == ""  # someone else's webhook


def test_unreachable_api_server_is_a_store_error():
    store = make(core=FakeApi(read_namespaced_secret=ConnectionRefusedError("refused")))
    with pytest.raises(StoreError, match="ConnectionRefusedError"):
        store.read_secret("webhook-ca")
