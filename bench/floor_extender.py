"""The floor arm of bench/e2e_throughput.py: the least an extender in mig-extender's server stack can cost.

Same stack as ``mig-extender serve``: gunicorn through ``process.Application`` (one gthread worker, the
same threads, keep-alive and timeouts), an API client built by ``cluster.client.api_client`` and every
Binding posted by the product's ``KubeBinder``. It keeps no books: /filter passes every candidate,
/prioritize scores every node 0, /bind creates the Binding. Whatever mig-extender spends beyond this
floor is its own decisions and bookkeeping; what the floor itself costs against stock is the price of
any HTTP extender with binding on this machine.

    python -m bench.floor_extender serve --bind 127.0.0.1:PORT --kubeconfig FILE [--threads N]

(``serve`` is accepted, so the e2e harness's ExtenderProcess starts it like the product.) Not a test,
not shipped: a benchmark's baseline.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from mig_extender.cluster.actions import KubeBinder  # noqa: E402
from mig_extender.cluster.client import api_client  # noqa: E402
from mig_extender.components.settings import Settings  # noqa: E402
from mig_extender.process import Application  # noqa: E402

JSON_HEADERS = [("Content-Type", "application/json")]


def floor_app(binder: KubeBinder) -> Callable[..., Iterable[bytes]]:
    """A WSGI app answering the three verbs with no decision at all, and /readyz."""

    def filter_(body: dict[str, Any]) -> Any:
        return {"Nodes": None, "NodeNames": body.get("NodeNames") or [], "FailedNodes": {},
                "FailedAndUnresolvableNodes": {}, "Error": ""}

    def prioritize(body: dict[str, Any]) -> Any:
        return [{"Host": n, "Score": 0} for n in body.get("NodeNames") or []]

    def bind(body: dict[str, Any]) -> Any:
        try:
            binder.bind(body["PodNamespace"], body["PodName"], body["PodUID"], body["Node"])
        except Exception as exc:  # the scheduler retries the pod; the floor reports like the product
            return {"Error": f"binding: {exc}"}
        return {"Error": ""}

    verbs = {"/filter": filter_, "/prioritize": prioritize, "/bind": bind}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        handler = verbs.get(path)
        if handler is None:
            status, out = ("200 OK", b"ok") if path in ("/readyz", "/healthz") else ("404 Not Found", b"{}")
        else:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            out = orjson.dumps(handler(orjson.loads(environ["wsgi.input"].read(length))))
            status = "200 OK"
        start_response(status, [*JSON_HEADERS, ("Content-Length", str(len(out)))])
        return [out]

    return app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["serve"])
    ap.add_argument("--bind", required=True)
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--threads", type=int, default=Settings.threads)
    ap.add_argument("--log-level", default="warning")
    args, _ = ap.parse_known_args()  # the product's other flags (--rule-store ...) mean nothing here
    settings = Settings(bind=args.bind, kubeconfig=args.kubeconfig, threads=args.threads, log_level=args.log_level)
    Application(settings, lambda: floor_app(KubeBinder(api_client(args.kubeconfig)))).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
