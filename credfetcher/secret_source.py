"""CF_AWS_SM_SECRET_NAME: the daemon-wide domainless identity, read from AWS Secrets Manager.

credentials-fetcher's ``--aws_sm_secret_name``: every AddKerberosLease reads its gMSAs as the
user in that secret. The secret is re-read every CF_AWS_SM_REFRESH seconds, and sooner (at most
every :data:`SECRET_RETRY` seconds) while a lease made with it fails to renew. A changed secret
(another user, or a new password) is used once it has proved it can read every such lease's
gMSA passwords; a refused one is not tried again before CF_REJECTED_PASSWORD_RETRY.

Reading the identity (:meth:`SecretSource.identity`, what AddKerberosLease does) never moves a
lease. The leases move to a new identity in :meth:`SecretSource.refresh` only, the supervisor's
refresh thread, which a read that adopts a new identity wakes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from credfetcher import aws
from credfetcher.config import Config
from credfetcher.errors import BindError, CredfetcherError, KeyRejectedError
from credfetcher.identity import UserIdentity

if TYPE_CHECKING:  # pragma: no cover
    from credfetcher.aws import SecretIdentity

log = logging.getLogger(__name__)

SECRET_RETRY = 30.0


def _never_failing() -> bool:
    return False


class SecretSource:
    """The cached secret identity, its refresh clock and the lease moves it triggers.

    ``prove(user)`` raises unless ``user`` can read every CF_AWS_SM_SECRET_NAME lease's gMSA
    passwords; ``attach(user)`` moves those leases to ``user``; ``failing()`` says whether one
    of them fails to renew (:class:`credfetcher.rebind.Rebinder` provides all three).
    """

    def __init__(
        self,
        config: Config,
        *,
        prove: Callable[[UserIdentity], None],
        attach: Callable[[UserIdentity], None],
        failing: Callable[[], bool] = _never_failing,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._prove = prove
        self._attach = attach
        self._failing = failing
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._current: SecretIdentity | None = None
        self._read_at = 0.0
        self._error = ""
        # A secret whose identity the DC refused: (identity key, not before, the error). The same
        # secret is not tried again before then (see CF_REJECTED_PASSWORD_RETRY).
        self._refused: tuple[tuple[str, str, str], float, str] | None = None
        # The identity the leases were last moved to (by attach), by key.
        self._attached: tuple[str, str, str] | None = None

    @property
    def configured(self) -> bool:
        return self.config.aws_sm_secret_name is not None

    @property
    def check_interval(self) -> float:
        return min(SECRET_RETRY, self.config.aws_sm_refresh)

    def problem(self) -> str:
        """What HealthCheck says: every AddKerberosLease needs this identity and there is none.
        A failed re-read while the last identity still serves is only logged."""
        if self._error and self._current is None:
            return f"cannot read CF_AWS_SM_SECRET_NAME: {self._error}"
        return ""

    def identity(self, *, refresh: bool = False) -> UserIdentity | None:
        """The identity (None when CF_AWS_SM_SECRET_NAME is unset), re-read every
        CF_AWS_SM_REFRESH, or now with ``refresh``.

        Raises the AWS or DC error when the secret cannot be read or used and no identity is
        cached. Moves no lease: a new identity wakes the refresh thread, which does.
        """
        name = self.config.aws_sm_secret_name
        if name is None:
            return None
        with self._lock:
            current = self._current
            now = self._monotonic()
            if (current is not None and not refresh
                    and now - self._read_at < self.config.aws_sm_refresh):
                return current.user
            try:
                fresh = aws.read_identity_secret(
                    name, None, endpoint_url=self.config.aws_endpoint_url
                )
            except CredfetcherError as exc:
                self._error = exc.message
                raise
            self._read_at = now
            if current is not None and current.user.key == fresh.user.key:
                self._current, self._error = fresh, ""
                return fresh.user
            try:
                self._prove_once(fresh.user, now)
            except CredfetcherError as exc:
                self._error = exc.message
                if current is None:
                    raise
                log.warning(
                    "secret %s now holds %s, which cannot be used (%s); its leases keep %s",
                    name,
                    fresh.user.label,
                    exc.message,
                    current.user.label,
                )
                return current.user
            self._current, self._error = fresh, ""
        log.info("identity from secret %s: %s", name, fresh.user.label)
        self._wake.set()
        return fresh.user

    def _prove_once(self, user: UserIdentity, now: float) -> None:
        """``prove(user)``, remembering a refusal of the password itself: the same secret
        raises the same error without asking the DC until CF_REJECTED_PASSWORD_RETRY."""
        refused = self._refused
        if refused is not None and refused[0] == user.key and now < refused[1]:
            raise BindError(
                f"{refused[2]} (not tried again for {refused[1] - now:.0f} s: "
                "CF_REJECTED_PASSWORD_RETRY)",
                identity=user.label,
            )
        try:
            self._prove(user)
        except (BindError, KeyRejectedError) as exc:
            self._refused = (user.key, now + self.config.rejected_password_retry, exc.message)
            raise
        self._refused = None

    def refresh(self) -> None:
        """One check of the refresh thread: re-read when due (or early while renewals fail),
        then move the leases to the identity if they do not have it yet."""
        if not self.configured:
            return
        failing = self._failing()
        age = self._monotonic() - self._read_at
        if (
            self._current is None
            or age >= self.config.aws_sm_refresh
            or (failing and age >= self.check_interval)
        ):
            self.identity(refresh=True)
        self.attach_pending()

    def attach_pending(self) -> None:
        """Move the leases to the current identity unless they were moved to it already."""
        with self._lock:
            current = self._current
            if current is None or self._attached == current.user.key:
                return
            self._attached = current.user.key
        self._attach(current.user)

    def wake(self) -> None:
        """Make the refresh thread check now (and notice a stop)."""
        self._wake.set()

    def refresh_loop(self, stop: threading.Event) -> None:
        """Thread body: move the leases to the identity read at start-up, then :meth:`refresh`
        every check interval (or when woken) until ``stop``."""
        self._wake.clear()
        self._guarded(self.attach_pending)
        while True:
            self._wake.wait(self.check_interval)
            if stop.is_set():
                return
            self._wake.clear()
            self._guarded(self.refresh)

    @staticmethod
    def _guarded(check: Callable[[], None]) -> None:
        try:
            check()
        except CredfetcherError as exc:
            log.warning("cannot read CF_AWS_SM_SECRET_NAME: %s", exc.message)
        except Exception:
            log.exception("refreshing the CF_AWS_SM_SECRET_NAME identity failed")
