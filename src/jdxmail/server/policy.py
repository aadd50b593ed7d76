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

__all__ = ["AuthAvailability", "AuthThrottle", "Policy", "Route", "domain_of"]


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


class AuthThrottle:
    """Failed logins per client address in a sliding window (survives reloads)."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def configure(self, limit: int, window: float) -> None:
        """Take new limits (on reload), keeping the failures counted so far."""
        self.limit, self.window = limit, window

    def failures(self, client_ip: str) -> int:
        """Failed logins from *client_ip* within the window."""
        times = self._failures.get(client_ip)
        if not times:
            return 0
        horizon = self._clock() - self.window
        while times and times[0] < horizon:
            times.popleft()
        if not times:
            del self._failures[client_ip]
            return 0
        return len(times)

    def blocked(self, client_ip: str) -> bool:
        """True when *client_ip* has used up its failed logins for the window."""
        return self.failures(client_ip) >= self.limit

    def record_failure(self, client_ip: str) -> int:
        """Count one failed login; return the failures now in the window."""
        count = self.failures(client_ip)
        self._failures.setdefault(client_ip, deque()).append(self._clock())
        if len(self._failures) > 100_000:
            # A flood of distinct addresses must not grow memory without bound.
            oldest = next(iter(self._failures))
            del self._failures[oldest]
        return count + 1
