"""Lockout-safe retries of a domainless user's refused password.

A domainless lease reads its gMSA's password as a user given by name and password
(RenewNonDomainJoinedKerberosLease). Every try of a wrong password is a failed pre-authentication
(RFC 4120 §7.5.9, ``KDC_ERR_PREAUTH_FAILED``) that AD counts towards the user's lockout, and the
count only resets once its observation window (the domain's ``lockOutObservationWindow``) has
passed since the last failure. The ordinary renewal backoff (seconds, capped at 30)
would lock the account within minutes, so a refused password is tried again no sooner than
``CF_REJECTED_PASSWORD_RETRY`` (:data:`REJECTED_PASSWORD_RETRY` by default), and held per
identity, not per group: N gMSAs read by one user cost one try per period, not N.
"""

from __future__ import annotations

from credfetcher.identity import UserIdentity

__all__ = ["REJECTED_PASSWORD_RETRY", "RefusedPasswords"]

# Longer than the usual observation windows (Microsoft's baseline: 15 min; Samba's default: 30),
# with a minute to spare. See docs/configuration.md.
REJECTED_PASSWORD_RETRY = 1860.0


class RefusedPasswords:
    """When each user identity whose password was refused may be tried again.

    Not thread-safe: the renewal scheduler's lock guards every call.
    """

    def __init__(self, retry: float = REJECTED_PASSWORD_RETRY) -> None:
        self.retry = retry
        self._until: dict[str, float] = {}

    @staticmethod
    def identity_of(account: object) -> str | None:
        """The key of a domainless user's identity behind ``account``; None for any other."""
        identity = getattr(account, "identity", None)
        return "|".join(identity.key) if isinstance(identity, UserIdentity) else None

    def claim(self, held: str, now: float, *, asked: bool) -> float | None:
        """Take the identity's one try of the period, or say when the next one is (None: try
        now). ``asked``: a caller brings new credentials, which are tried at once."""
        until = self._until.get(held)
        if until is None:
            return None
        if not asked and now < until:
            return until  # another group of this identity was refused: same window
        # This attempt is the identity's one try for the period: others wait for it.
        self._until[held] = now + self.retry
        return None

    def failed(self, held: str, now: float, *, refused: bool) -> float | None:
        """An attempt failed; when ``refused`` (the password itself), return when the identity
        may be tried again. Any other failure frees the next try at once."""
        if refused:
            self._until[held] = now + self.retry
            return self._until[held]
        if held in self._until:
            self._until[held] = now  # not a refusal: the next try may go
        return None

    def succeeded(self, held: str) -> None:
        self._until.pop(held, None)
