"""The Kubernetes API client: how every other cluster module reaches the API server.

One ApiClient per process with a connection pool sized for kube-scheduler's bursts of binds; generated
calls read as raw JSON dicts (no model classes: cheaper, and the pure core reads plain dicts); one POST
path for the hot Binding write. Must not: decide anything, or hold state beyond the client.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from kubernetes import client, config
from kubernetes.client.rest import ApiException

JSON = Mapping[str, Any]
MERGE_PATCH = "application/merge-patch+json"
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class ClientConfigError(ValueError):
    """A kubeconfig or service account that cannot be used; one line, naming what to fix."""


def in_a_pod(environ: Mapping[str, str] | None = None, token: Path = SERVICE_ACCOUNT_TOKEN) -> str:
    """'' when the in-cluster configuration is there, else why not (as client-go's InClusterConfig checks)."""
    env = os.environ if environ is None else environ
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        if not env.get(var):
            return f"not running in a pod ({var} is not set)"
    if not token.is_file():
        return f"no service account token at {token}"
    return ""


def default_kubeconfig(environ: Mapping[str, str] | None = None, home: Path | None = None) -> tuple[str, str]:
    """(path, where it came from) as kubectl finds it outside a pod: $KUBECONFIG, else ~/.kube/config.

    ('', why there is none) when neither is there."""
    env = os.environ if environ is None else environ
    if env.get("KUBECONFIG"):
        return env["KUBECONFIG"], "$KUBECONFIG"
    path = (home or Path.home()) / ".kube" / "config"
    if path.is_file():
        return str(path), "~/.kube/config"
    return "", f"$KUBECONFIG is not set and {path} does not exist"


def describe_client_config(kubeconfig: str = "", in_cluster: bool = False) -> str:
    """Load the client configuration as ``api_client`` will (no API call) and say what it points at.

    Raises ClientConfigError for a missing file, a file that is not a kubeconfig, or no pod around."""
    cfg = client.Configuration()
    if in_cluster:
        why = in_a_pod()
        if why:
            raise ClientConfigError(why)
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException as exc:
            raise ClientConfigError(str(exc)) from exc
        return f"the pod's service account, API server {cfg.host}"
    paths = [p for p in kubeconfig.split(os.pathsep) if p]
    if not any(os.path.isfile(p) for p in paths):
        raise ClientConfigError("not a file" if any(os.path.exists(p) for p in paths) else "no such file")
    try:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        _, current = config.list_kube_config_contexts(config_file=kubeconfig)
    except Exception as exc:  # the loader raises whatever its YAML and dict walking meet (TypeError, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ClientConfigError(f"not a usable kubeconfig ({first})") from exc
    return f"kubeconfig {kubeconfig}, context {current.get('name', '?')}, API server {cfg.host}"


def api_client(kubeconfig: str = "", in_cluster: bool = False) -> client.ApiClient:
    """An ApiClient for a kubeconfig file or the pod's service account."""
    if in_cluster:
        config.load_incluster_config()
        return _pooled(client.ApiClient())
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig or None, client_configuration=cfg)
    return _pooled(client.ApiClient(cfg))


POOL_SIZE = 32  # concurrent API calls kept alive: kube-scheduler sends binds in bursts (async binding)


def _pooled(api: client.ApiClient) -> client.ApiClient:
    """Size the connection pool for bursts of binds, so each reuses a warm TLS connection (the default,
    5 x CPUs, is 10 here and made every further concurrent bind open a new connection)."""
    api.configuration.connection_pool_maxsize = POOL_SIZE
    api.rest_client = type(api.rest_client)(api.configuration)
    return api


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a generated API method and return the JSON body as a dict (no model deserialization).

    Every generated-client call that is not a watch goes through here (Bindings go through JsonPoster):
    the body is read and the connection handed back to the pool. (A response left unread keeps its
    connection, so the next call pays a new TLS handshake: that made each Binding ~2x slower and capped
    the extender's binds near 50/s.)
    """
    response = call(*args, _preload_content=False, **kwargs)
    try:
        return orjson.loads(response.data or b"{}")
    finally:
        response.release_conn()


class JsonPoster:
    """POSTs JSON through an ApiClient's own urllib3 pool, TLS settings and credentials.

    For the one write on kube-scheduler's critical path (a Binding per pod): the generated method spent
    about as much Python on pydantic argument validation and parameter serialisation as on the HTTP
    exchange itself, and the client's ``configuration.host`` scans the whole environment for proxy
    variables on every read (~0.3 ms a call): the host is read once here. Credentials are read per
    call, so a rotated service-account token is picked up as the generated client would.
    """

    def __init__(self, api: client.ApiClient, timeout: float = 4.0) -> None:
        # below kube-scheduler's extender httpTimeout (5 s in the generated configuration), so the
        # scheduler hears how the bind ended rather than giving up on a Binding that may still land
        self._api = api
        self._host = api.configuration.host
        self._timeout = timeout

    def post(self, path: str, body: JSON) -> None:
        """Raises ApiException on an error status."""
        api = self._api
        headers = {**api.default_headers, "Content-Type": "application/json", "Accept": "application/json"}
        for auth in api.configuration.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        response = api.rest_client.pool_manager.request("POST", self._host + path, body=orjson.dumps(body),
                                                        headers=headers, timeout=self._timeout)
        if response.status >= 400:
            exc = ApiException(status=response.status, reason=response.reason)
            exc.body = response.data.decode("utf-8", "replace")
            raise exc
