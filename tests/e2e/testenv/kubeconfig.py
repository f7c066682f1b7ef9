"""Write kubeconfig files for the test cluster.

One file per identity, each pointing at the cluster CA by path (so kubectl and the Python client both
read them, and nothing secret is duplicated). Files are mode 0600 because they hold credentials.

Must not: talk to the API server.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CLUSTER = "mig-e2e"


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_file: Path,
    user: str,
    token: str | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    namespace: str = "default",
) -> Path:
    """A single-context kubeconfig for `user`, authenticated by a bearer token or a client certificate."""
    if (token is None) == (client_cert is None):
        raise ValueError("give exactly one of token or client_cert/client_key")
    credentials: dict[str, str] = (
        {"token": token}
        if token is not None
        else {"client-certificate": str(client_cert), "client-key": str(client_key)}
    )
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER, "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": CLUSTER, "context": {"cluster": CLUSTER, "user": user, "namespace": namespace}}],
        "current-context": CLUSTER,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
