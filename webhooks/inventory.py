"""What is stored in the cluster, read page by page, for `audit`; and the few objects it writes.

Objects are read as raw JSON, exactly as the API server stores them and would send them to a
webhook (the typed models of the `kubernetes` client would rename every field). Lists are read
in pages (`limit` and `continue`), so tens of thousands of objects never arrive in one response;
a page's `continue` token that expired (HTTP 410) is reported, not retried silently.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import orjson

PAGE_SIZE = 500
"""kubectl's page size: a page of tool pods is a few MiB at most."""
TIMEOUT_SECONDS = 60.0


class ApiError(Exception):
    """The API server answered with an error (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Resource:
    """A kind the API server serves, and how to address it."""

    group: str
    version: str
    plural: str
    kind: str
    snake: str = ""
    """The kind as the kubernetes client's typed APIs spell it (`stateful_set`); "" for custom
    resources, which go through its CustomObjectsApi."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", "config_map")


class Api(Protocol):
    """The calls `audit` makes; `KubernetesApi` makes them with the kubernetes client."""

    def list_page(self, resource: Resource, namespace: str | None, *, limit: int, token: str,
                  label_selector: str) -> dict[str, Any]:
        """One page of a list (a `...List` object); raises ApiError."""
        ...

    def read(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, None when there is none; raises ApiError."""
        ...

    def write(self, resource: Resource, namespace: str, body: Mapping[str, Any]) -> None:
        """Create the object, or replace the one of that name; raises ApiError."""
        ...

    def delete(self, resource: Resource, namespace: str, name: str) -> None:
        """Delete an object (one already gone is fine); raises ApiError."""
        ...


def list_objects(api: Api, resource: Resource, *, namespace: str | None = None,
                 label_selector: str = "", page_size: int = PAGE_SIZE,
                 ) -> Iterator[dict[str, Any]]:
    """Every object of a resource (in one namespace, or all), a page at a time.

    Items of a list carry no kind and apiVersion; they are filled in, as a webhook gets them.
    """
    token = ""
    while True:
        page = api.list_page(resource, namespace, limit=page_size, token=token,
                             label_selector=label_selector)
        for item in page.get("items") or ():
            if isinstance(item, dict):
                item.setdefault("apiVersion", resource.api_version)
                item.setdefault("kind", resource.kind)
                yield item
        metadata = page.get("metadata")
        token = metadata.get("continue", "") if isinstance(metadata, dict) else ""
        if not token:
            return


class KubernetesApi:
    """Api over the kubernetes client's typed APIs (their raw JSON answers): KUBECONFIG (or
    ~/.kube/config), else the in-cluster ServiceAccount."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client  # noqa: PLC0415 - only audit needs the client

        self.client = client
        self.apis: dict[str, Any] = {
            "": client.CoreV1Api(api_client), "apps": client.AppsV1Api(api_client),
                     "batch": client.BatchV1Api(api_client)}
        self.custom = client.CustomObjectsApi(api_client)

    @classmethod
    def from_environment(cls, context: str | None = None) -> KubernetesApi:
        from kubernetes import client, config  # noqa: PLC0415

        configuration = client.Configuration()
        try:
            if context is None and os.environ.get("KUBERNETES_SERVICE_HOST") \
                    and not os.environ.get("KUBECONFIG"):
                config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration)
            else:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    context=context, client_configuration=configuration)
        except (config.ConfigException, OSError) as error:
            raise ApiError(0, f"no cluster to read: {error}") from None
        return cls(client.ApiClient(configuration))

    def list_page(self, resource: Resource, namespace: str | None, *, limit: int, token: str,
                  label_selector: str) -> dict[str, Any]:
        options = {"limit": limit, "label_selector": label_selector or None}
        if token:
            options["_continue"] = token
        if not resource.snake:
            where = (namespace,) if namespace else ()
            call = getattr(self.custom, "list_namespaced_custom_object" if namespace
                           else "list_cluster_custom_object")
            return self._json(lambda: call(resource.group, resource.version, *where,
                                           resource.plural, **options, **_RAW))
        api = self.apis[resource.group]
        if namespace:
            method = getattr(api, f"list_namespaced_{resource.snake}")
            return self._json(lambda: method(namespace, **options, **_RAW))
        method = getattr(api, f"list_{resource.snake}_for_all_namespaces")
        return self._json(lambda: method(**options, **_RAW))

    def read(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        if resource.snake:
            method = getattr(self.apis[resource.group], f"read_namespaced_{resource.snake}")
            call = functools.partial(method, name, namespace, **_RAW)
        else:
            call = functools.partial(self.custom.get_namespaced_custom_object, resource.group,
                                     resource.version, namespace, resource.plural, name, **_RAW)
        try:
            return self._json(call)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def write(self, resource: Resource, namespace: str, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        current = self.read(resource, namespace, name)
        if resource == CONFIGMAPS:
            configmap = self.client.V1ConfigMap(
                api_version="v1", kind="ConfigMap", data=dict(body.get("data") or {}),
                metadata=self.client.V1ObjectMeta(
                    name=name, namespace=namespace, labels=dict(body["metadata"].get("labels")
                                                                or {})))
            core = self.apis[""]
            if current is None:
                self._json(lambda: core.create_namespaced_config_map(namespace, configmap, **_RAW))
            else:
                self._json(lambda: core.replace_namespaced_config_map(name, namespace, configmap,
                                                                      **_RAW))
            return
        if resource.snake:
            raise ValueError(f"writing {resource} is not supported")
        args = (resource.group, resource.version, namespace, resource.plural)
        if current is None:
            self._json(lambda: self.custom.create_namespaced_custom_object(*args, dict(body),
                                                                           **_RAW))
        else:
            # Custom resources take no unconditional update: replace the version just read.
            replacement = {**body, "metadata": {**body["metadata"],
                                                "resourceVersion": current["metadata"][
                                                    "resourceVersion"]}}
            self._json(lambda: self.custom.replace_namespaced_custom_object(
                *args, name, replacement, **_RAW))

    def delete(self, resource: Resource, namespace: str, name: str) -> None:
        if resource.snake:
            raise ValueError(f"deleting {resource} is not supported")
        try:
            self._json(lambda: self.custom.delete_namespaced_custom_object(
                resource.group, resource.version, namespace, resource.plural, name, **_RAW))
        except ApiError as error:
            if error.status != 404:
                raise

    def _json(self, call: Callable[[], Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        try:
            response = call()
        except ApiException as error:
            raise ApiError(int(error.status or 0), _reason(error)) from None
        except Exception as error:  # urllib3: refused, reset, timed out, TLS
            cause = getattr(error, "reason", None) or error
            raise ApiError(0, f"{type(cause).__name__}: {str(cause)[:300]}") from None
        data = getattr(response, "data", b"")
        decoded = orjson.loads(data) if data else {}
        return decoded if isinstance(decoded, dict) else {}


# Every call: the raw JSON, one attempt within a deadline.
_RAW: dict[str, Any] = {"_preload_content": False, "_request_timeout": TIMEOUT_SECONDS}


def _reason(error: Any) -> str:
    """The Status message the API server sent, else the HTTP reason."""
    try:
        status = orjson.loads(error.body or b"")
    except (orjson.JSONDecodeError, TypeError):
        status = None
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        return str(status["message"])
    return f"HTTP {error.status} {error.reason or ''}".strip()
