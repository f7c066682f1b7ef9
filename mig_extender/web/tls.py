"""Serve TLS from a cert/key pair that is reloaded when the files change (cert-manager or Secret rotation).

Kubernetes updates a mounted Secret by swapping a symlink, so we poll the files' modification times
(resolved through links) every few seconds and load the new pair into the *same* SSLContext: new
handshakes use the new certificate, open connections are left alone. A pair that fails to load (a
half-written rotation) is logged and the old one kept.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading

log = logging.getLogger(__name__)


class ReloadingContext:
    def __init__(self, certfile: str, keyfile: str, interval: float = 5.0) -> None:
        self.certfile, self.keyfile, self.interval = certfile, keyfile, interval
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(certfile, keyfile)
        self._stamp = self._mtimes()
        self.reloads = 0
        self._stop = threading.Event()

    def _mtimes(self) -> tuple[float, float]:
        return (os.stat(os.path.realpath(self.certfile)).st_mtime_ns,
                os.stat(os.path.realpath(self.keyfile)).st_mtime_ns)

    def check(self) -> bool:
        """Reload if the files changed; True when a new pair was loaded."""
        try:
            stamp = self._mtimes()
            if stamp == self._stamp:
                return False
            self.context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS pair not reloaded (keeping the current one): %s", exc)
            return False
        self._stamp = stamp
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.certfile)
        return True

    def start(self) -> ReloadingContext:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.check()

        threading.Thread(target=loop, name="tls-reload", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
