"""Who may relay, who may log in where, which senders a user may use, and login throttling.

The server is never an open relay: a recipient outside ``LocalDomains`` needs a logged
in session or a client address in ``TrustedNetworks``. Local recipients go into
mailboxes; with no relay configured, every accepted recipient does (a dev inbox).
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from jdxmail import replies
from jdxmail.replies import Reply
from jdxmail.settings.model import SmtpServerSettings, UserSettings

__all__ = ["ADDRESS_FACTOR", "AuthAvailability", "AuthThrottle", "Policy", "Route", "domain_of"]


class Route(enum.Enum):
    """Where an accepted recipient's copy goes."""

    LOCAL = "local"
    RELAY = "relay"


@dataclass(frozen=True, slots=True)
class AuthAvailability:
    """Whether AUTH is offered on a connection, and the reply when it is not."""

    offered: bool
    refusal: Reply | None = None


def domain_of(address: str) -> str:
    """The domain of *address*, lower-cased, without a trailing dot ("" when none)."""
    _, at, domain = address.rpartition("@")
    return domain.lower().rstrip(".") if at else ""


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback(address: str) -> bool:
    """True when *address* (an IP as text) is this machine's loopback."""
    ip = _ip(address)
    return ip is not None and ip.is_loopback


#: client addresses whose TrustedNetworks answer is remembered (per settings generation)
_TRUSTED_CACHE_SIZE = 4096


class Policy:
    """The relay, AUTH and sender rules of one settings generation (replaced on reload)."""

    def __init__(
        self,
        server: SmtpServerSettings,
        *,
        relays_configured: bool,
        tls_available: bool,
    ) -> None:
        self.server = server
        self.relays_configured = relays_configured
        self.tls_available = tls_available
        self.local_domains = frozenset(server.effective_local_domains)
        self._users = {user.user_name.casefold(): user for user in server.users}
        #: is_trusted's answers by client address (asked for every RCPT)
        self._trusted: dict[str, bool] = {}

    def user(self, name: str) -> UserSettings | None:
        """The user called *name* (case-insensitive), or None."""
        return self._users.get(name.casefold())

    def is_trusted(self, client_ip: str) -> bool:
        """True when *client_ip* is in ``TrustedNetworks``."""
        known = self._trusted.get(client_ip)
        if known is not None:
            return known
        ip = _ip(client_ip)
        trusted = ip is not None and any(
            ip.version == net.version and ip in net for net in self.server.trusted_networks
        )
        if len(self._trusted) >= _TRUSTED_CACHE_SIZE:
            self._trusted.clear()
        self._trusted[client_ip] = trusted
        return trusted

    def is_local(self, recipient: str) -> bool:
        """True when *recipient* is in a local domain (or has no domain, like postmaster)."""
        domain = domain_of(recipient)
        return domain == "" or domain in self.local_domains

    def route(self, recipient: str) -> Route:
        """LOCAL for local domains and for everything when no relay is configured."""
        if self.is_local(recipient) or not self.relays_configured:
            return Route.LOCAL
        return Route.RELAY

    def may_send_to(self, recipient: str, *, client_ip: str, authenticated: bool) -> bool:
        """Whether this client may give *recipient*: local, logged in, or trusted."""
        return self.is_local(recipient) or authenticated or self.is_trusted(client_ip)

    def auth_availability(self, *, client_ip: str, tls_active: bool) -> AuthAvailability:
        """Whether AUTH is offered to this client now.

        Never without users. Off loopback, when TLS is configured, only over TLS
        (RFC 4954 §4: 538) unless ``AllowPlaintextAuth`` is set.
        """
        if not self._users:
            return AuthAvailability(False, replies.AUTH_NOT_AVAILABLE)
        if tls_active or is_loopback(client_ip) or self.server.allow_plaintext_auth:
            return AuthAvailability(True)
        if self.tls_available:
            return AuthAvailability(False, replies.AUTH_NEEDS_TLS)
        return AuthAvailability(True)

    def sender_allowed(self, user: UserSettings, sender: str) -> bool:
        """Whether *user* may use *sender* as the envelope sender (``AllowedSenders``)."""
        if user.allowed_senders is None:
            return True
        wanted = sender.casefold()
        if wanted and wanted == user.user_name.casefold():
            return True
        domain = domain_of(sender)
        for entry in user.allowed_senders:
            allowed = entry.strip().casefold()
            if allowed.startswith("@"):
                if domain and domain == allowed[1:].rstrip("."):
                    return True
            elif allowed == wanted:
                return True
        return False


#: an address is throttled as a whole after this many times AuthFailureLimit failures
#: (over any user names): enough for a few misconfigured apps on one machine, far too
#: few for guessing passwords across many names
ADDRESS_FACTOR = 4


class AuthThrottle:
    """Failed logins in a sliding window, per client address and user name (survives
    reloads).

    A (address, user) pair is blocked after ``limit`` failures, so one app with a wrong
    password does not lock out the other apps on the same machine (they share
    127.0.0.1). The address as a whole is blocked after ``limit * ADDRESS_FACTOR``
    failures over any names, so trying many names stays throttled.
    """

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str | tuple[str, str], deque[float]] = {}

    def configure(self, limit: int, window: float) -> None:
        """Take new limits (on reload), keeping the failures counted so far."""
        self.limit, self.window = limit, window

    @property
    def address_limit(self) -> int:
        """Failures over all names after which an address is blocked."""
        return self.limit * ADDRESS_FACTOR

    @staticmethod
    def _key(client_ip: str, user: str | None) -> str | tuple[str, str]:
        return client_ip if user is None else (client_ip, user.casefold())

    def failures(self, client_ip: str, user: str | None = None) -> int:
        """Failed logins within the window from *client_ip* (as *user*, or over all)."""
        key = self._key(client_ip, user)
        times = self._failures.get(key)
        if not times:
            return 0
        horizon = self._clock() - self.window
        while times and times[0] < horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)

    def address_blocked(self, client_ip: str) -> bool:
        """True when *client_ip* failed too often over all names: no AUTH at all."""
        return self.failures(client_ip) >= self.address_limit

    def blocked(self, client_ip: str, user: str | None = None) -> bool:
        """True when *client_ip* may not try *user* now.

        Without *user* this is a throttle by address alone (``limit`` failures from
        the address, as the web console's login form counts them).
        """
        if user is None:
            return self.failures(client_ip) >= self.limit
        if self.address_blocked(client_ip):
            return True
        return self.failures(client_ip, user) >= self.limit

    def record_failure(self, client_ip: str, user: str | None = None) -> int:
        """Count one failed login; return the failures of this address and user now in
        the window (over all names without *user*)."""
        now = self._clock()
        for key in {self._key(client_ip, None), self._key(client_ip, user)}:
            self._failures.setdefault(key, deque()).append(now)
        while len(self._failures) > 100_000:
            # A flood of distinct addresses or names must not grow memory without bound.
            del self._failures[next(iter(self._failures))]
        return self.failures(client_ip, user)
