"""The service's background threads, started and stopped in one place.

Four threads: the start-up bind (warm-up), the loading of the leases found on disk (recovery),
the renewal loop (:class:`credfetcher.renewal.RenewalScheduler`) and, with CF_AWS_SM_SECRET_NAME,
the secret's refresh (:meth:`credfetcher.secret_source.SecretSource.refresh_loop`). Every one is a
daemon thread: :meth:`Supervisor.stop` asks each to end and waits for them together at most
``stop_timeout`` seconds, so a thread stuck in a DC call cannot hold up the daemon's exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from credfetcher.errors import CredfetcherError

if TYPE_CHECKING:  # pragma: no cover
    from credfetcher.service import LeaseService

log = logging.getLogger(__name__)

STOP_TIMEOUT = 5.0


class Supervisor:
    """Owns the threads of one :class:`credfetcher.service.LeaseService`."""

    def __init__(self, service: LeaseService, *, stop_timeout: float = STOP_TIMEOUT) -> None:
        self.service = service
        self.stop_timeout = stop_timeout
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def start(self, serving: threading.Event | None = None) -> None:
        """List the leases on disk, start the renewal loop, load the leases in the background.

        ``serving``: the loader waits for it (the daemon sets it once the socket answers). A
        loader that ran beside the server's start-up held the GIL against it: at 20,000 leases
        the first HealthCheck answer came 1.8-2.2 s after a restart instead of ~0.8 s.

        Only krbdir's listing happens before this returns, so the daemon serves at once whatever
        the lease count: an upgrade's restart costs the ECS agent's or kubelet's calls nothing,
        and systemd's start timeout is never near. Renewal is held while loading, then each due
        group is renewed once (one AS exchange per account, not one per lease loaded). With
        CF_AWS_SM_SECRET_NAME the secret is read now (leases made with it wait for it after a
        restart); a failure is logged, not fatal: the refresh thread tries again.
        """
        service = self.service
        # Off the start-up path: a slow or absent DC must not delay serving.
        self._spawn("warm-up", service.credentials.warm_up)
        names = service.store.scan()
        service.index.begin_loading(names)
        service.scheduler.hold()
        service.scheduler.start()
        self._spawn("recovery", self._recover, names, serving)
        secrets = service.secrets
        if secrets.configured:
            try:
                secrets.identity(refresh=True)
            except CredfetcherError as exc:
                log.warning(
                    "CF_AWS_SM_SECRET_NAME %s: %s", service.config.aws_sm_secret_name, exc.message
                )
            self._spawn("aws-secret", secrets.refresh_loop, self._stop)

    def _recover(self, names: list[str], serving: threading.Event | None) -> None:
        if serving is not None:
            while not serving.wait(0.1):
                if self._stop.is_set():
                    self.service.index.end_loading()
                    self.service.scheduler.release()
                    return
        self.service.recover(names)

    def stop(self) -> None:
        """Ask every thread to end; wait for them at most ``stop_timeout`` seconds in all."""
        deadline = time.monotonic() + self.stop_timeout
        self._stop.set()
        self.service.secrets.wake()
        self.service.scheduler.stop(timeout=self.stop_timeout)  # joins the renewal loop
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.info("thread %s still running at stop; leaving it", thread.name)
        self._threads.clear()
