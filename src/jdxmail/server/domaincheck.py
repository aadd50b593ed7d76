"""The optional check of a recipient's domain before mail for it is queued (row C9).

With ``Delivery.CheckRecipientDomain`` on, ``RCPT TO`` for a relayed recipient asks
DNS for the domain's MX records, then its A and AAAA records (RFC 5321 §5.1: a
domain without MX takes mail at its address). A domain that has none of them, or
does not exist, gets ``550 5.1.2`` at once — with a did-you-mean when it looks like
a typo of a big provider's domain (``gmial.com``: "did you mean gmail.com?") — instead of a bounce
days later. A lookup that fails for now (timeout, SERVFAIL) accepts the recipient:
the check is there for typos, never to hold mail up.

DNS is asked over UDP with asyncio (never blocking the event loop), at the resolver
``Delivery.DnsResolver`` names, else the first ``nameserver`` of
``/etc/resolv.conf``. Answers are kept for a few minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from jdxmail import replies
from jdxmail.providers import suggest_mail_domain
from jdxmail.replies import Reply
from jdxmail.settings.model import parse_resolver

__all__ = ["DomainCheck", "DomainVerdict", "parse_resolver", "system_resolver"]

logger = logging.getLogger("jdxmail.smtp")

_MX, _A, _AAAA = 15, 1, 28
_NOERROR, _NXDOMAIN = 0, 3
#: seconds for one query; it is sent twice at most
_QUERY_TIMEOUT = 2.0
#: how long an answer is kept: a domain that exists, one that does not
_KEEP_FOUND, _KEEP_MISSING = 600.0, 60.0
_CACHE_LIMIT = 4096


class DnsError(Exception):
    """No usable answer for now (timeout, SERVFAIL, a garbled reply)."""


@dataclass(frozen=True, slots=True)
class DomainVerdict:
    """What DNS says of a domain: whether it takes mail, and why not."""

    takes_mail: bool
    reason: str = ""


def system_resolver(resolv_conf: Path = Path("/etc/resolv.conf")) -> tuple[str, int] | None:
    """The first ``nameserver`` of *resolv_conf*, or None."""
    try:
        lines = resolv_conf.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            with contextlib.suppress(ValueError):
                return parse_resolver(fields[1].split("%", 1)[0])
    return None


def _query(name: bytes, qtype: int, ident: int) -> bytes:
    labels = b"".join(bytes([len(label)]) + label for label in name.split(b".") if label)
    return (
        struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
        + labels
        + b"\0"
        + struct.pack("!HH", qtype, 1)
    )


def _skip_name(data: bytes, offset: int) -> int:
    while True:
        length = data[offset]
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return offset + 2
        offset += 1 + length
        if length == 0:
            return offset


def _answers(data: bytes, ident: int, qtype: int) -> tuple[int, list[bytes]]:
    """(rcode, rdata of each answer of *qtype*) of the reply *data*; DnsError if garbled."""
    try:
        got, flags, qdcount, ancount, _, _ = struct.unpack_from("!HHHHHH", data)
        if got != ident or not flags & 0x8000:
            raise DnsError("not the answer to our query")
        offset = 12
        for _ in range(qdcount):
            offset = _skip_name(data, offset) + 4
        found: list[bytes] = []
        for _ in range(ancount):
            offset = _skip_name(data, offset)
            rtype, _, _, length = struct.unpack_from("!HHIH", data, offset)
            offset += 10
            if rtype == qtype:
                found.append(data[offset : offset + length])
            offset += length
    except (struct.error, IndexError):
        raise DnsError("a garbled DNS answer") from None
    return flags & 0x000F, found


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, answer: asyncio.Future[bytes]) -> None:
        self.answer = answer

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


class DomainCheck:
    """Asks DNS whether recipient domains take mail; keeps the answers for a while."""

    def __init__(self, resolver: tuple[str, int]) -> None:
        """Ask the DNS server at *resolver* (ip, port)."""
        self.resolver = resolver
        self._cache: dict[str, tuple[float, DomainVerdict]] = {}

    async def refusal(self, address: str) -> Reply | None:
        """The ``550 5.1.2`` for *address* when its domain takes no mail, else None."""
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if not domain or domain.startswith("["):  # (an address literal: nothing to ask)
            return None
        verdict = await self.verdict(domain)
        if verdict.takes_mail:
            return None
        suggestion = suggest_mail_domain(domain)
        hint = f" (did you mean {suggestion}?)" if suggestion else ""  # (replies are ASCII)
        return replies.RECIPIENT_DOMAIN_UNKNOWN.format(
            domain=domain, reason=verdict.reason, hint=hint
        )

    async def verdict(self, domain: str) -> DomainVerdict:
        """Whether *domain* takes mail (MX, else A/AAAA); a failed lookup says it does."""
        now = time.monotonic()
        kept = self._cache.get(domain)
        if kept is not None and kept[0] > now:
            return kept[1]
        try:
            name = domain.encode("idna")
        except UnicodeError:
            return DomainVerdict(True)
        try:
            verdict = await self._ask(name)
        except (DnsError, OSError, TimeoutError) as exc:
            logger.warning("recipient domain %s not checked: DNS did not answer (%s)", domain, exc)
            return DomainVerdict(True)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        keep = _KEEP_FOUND if verdict.takes_mail else _KEEP_MISSING
        self._cache[domain] = (now + keep, verdict)
        return verdict

    async def _ask(self, name: bytes) -> DomainVerdict:
        rcode, mx = await self._lookup(name, _MX)
        if rcode == _NXDOMAIN:
            return DomainVerdict(False, "does not exist")
        if rcode != _NOERROR:
            raise DnsError(f"DNS error code {rcode}")
        if mx:
            if all(rdata[2:] == b"\0" for rdata in mx):  # RFC 7505 null MX: "0 ."
                return DomainVerdict(False, "takes no mail (null MX)")
            return DomainVerdict(True)
        for qtype in (_A, _AAAA):
            rcode, found = await self._lookup(name, qtype)
            if rcode == _NOERROR and found:
                return DomainVerdict(True)
        return DomainVerdict(False, "has no MX, A or AAAA record")

    async def _lookup(self, name: bytes, qtype: int) -> tuple[int, list[bytes]]:
        last: Exception = DnsError("no answer")
        for _ in range(2):
            ident = secrets.randbelow(0x10000)
            try:
                return await self._exchange(_query(name, qtype, ident), ident, qtype)
            except (TimeoutError, DnsError, OSError) as exc:
                last = exc
        raise last

    async def _exchange(self, query: bytes, ident: int, qtype: int) -> tuple[int, list[bytes]]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()
        transport, exchange = await loop.create_datagram_endpoint(
            lambda: _Exchange(answer), remote_addr=self.resolver
        )
        try:
            transport.sendto(query)
            async with asyncio.timeout(_QUERY_TIMEOUT):
                while True:
                    data = await answer
                    with contextlib.suppress(DnsError):  # (a stray datagram: wait on)
                        return _answers(data, ident, qtype)
                    answer = exchange.answer = loop.create_future()
        finally:
            transport.close()
