"""The PROXY protocol (HAProxy's spec, versions 1 and 2), read strictly.

A load balancer in front of jdxmail opens each connection with a header that names the
real client; on ``SmtpServer.ProxyPort`` the session reads it before it says anything
(SMTP's server speaks first, so nothing the client sent can be mistaken for it) and then
uses the client's address everywhere: trusted networks, throttling, connection limits,
logs and ``Received:``.

:func:`parse` takes the bytes received so far and returns ``None`` while the header is
incomplete, a :class:`ProxyHeader` once it is whole, or raises
:class:`ProxyHeaderError` as soon as the bytes cannot be a valid header. Anything the
spec does not allow is refused, never guessed: ``UNKNOWN`` (v1) and address families
other than TCP over IPv4/IPv6 (v2) are refused too, since jdxmail cannot apply its
rules without the client's address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

__all__ = ["V1_MAX", "V2_SIGNATURE", "ProxyHeader", "ProxyHeaderError", "parse"]

#: the 12 bytes every version 2 header starts with
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: longest version 1 header, CRLF included (the spec's 107 bytes)
V1_MAX = 107
#: longest version 2 header accepted (16 fixed bytes + addresses + TLVs HAProxy sends)
V2_MAX = 16 + 1024

_V1_LINE = re.compile(
    rb"PROXY (TCP4|TCP6) ([0-9a-fA-F.:]{2,45}) ([0-9a-fA-F.:]{2,45}) "
    rb"(0|[1-9][0-9]{0,4}) (0|[1-9][0-9]{0,4})\r\n"
)


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY protocol header jdxmail accepts (the reason says why)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a PROXY header says: the client (source) and the address it connected to.

    ``local`` is a v2 LOCAL header: the proxy speaking for itself (its health check);
    the connection's own addresses apply and the address fields are empty.
    """

    version: int
    local: bool
    client_ip: str = ""
    client_port: int = 0
    server_ip: str = ""
    server_port: int = 0
    length: int = 0  # bytes the header took, to drop from the input


def parse(data: bytes | bytearray) -> ProxyHeader | None:
    """Parse a PROXY header at the start of *data*; None while more bytes are needed.

    Raises ProxyHeaderError as soon as *data* cannot start a valid v1 or v2 header.
    """
    if not data:
        return None
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(bytes(data[:V2_MAX]))
    return _parse_v1(bytes(data[:V1_MAX]))


def _parse_v1(data: bytes) -> ProxyHeader | None:
    prefix = b"PROXY "
    if not (data.startswith(prefix) or prefix.startswith(data[: len(prefix)])):
        raise ProxyHeaderError("no PROXY header (the connection did not start with one)")
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data:
            raise ProxyHeaderError("PROXY v1 header not ended by CRLF within 107 bytes")
        return None
    line = data[: end + 2]
    if line.startswith(b"PROXY UNKNOWN"):
        raise ProxyHeaderError("PROXY v1 UNKNOWN: the proxy does not know the client")
    match = _V1_LINE.fullmatch(line)
    if match is None:
        raise ProxyHeaderError(f"malformed PROXY v1 header {_shown(line)}")
    family, source, dest, sport, dport = (g.decode("ascii") for g in match.groups())
    kind = ipaddress.IPv4Address if family == "TCP4" else ipaddress.IPv6Address
    try:
        client, server = kind(source), kind(dest)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 {family} header with a bad address") from None
    # Proxies write addresses as inet_ntop does; any other spelling (leading zeros,
    # upper case) is refused, so one address has one form in every rule and log.
    af = socket.AF_INET if family == "TCP4" else socket.AF_INET6
    if source != socket.inet_ntop(af, client.packed) or dest != socket.inet_ntop(af, server.packed):
        raise ProxyHeaderError(f"PROXY v1 {family} header with an address not in canonical form")
    ports = int(sport), int(dport)
    if max(ports) > 65535:
        raise ProxyHeaderError("PROXY v1 header with a port above 65535")
    return ProxyHeader(1, False, str(client), ports[0], str(server), ports[1], len(line))


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyHeaderError("no PROXY header (bad v2 signature)")
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("no PROXY header (bad v2 signature)")
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2 header with version {version}")
    if command not in (0, 1):
        raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
    family, transport = data[13] >> 4, data[13] & 0x0F
    length = int.from_bytes(data[14:16], "big")
    total = 16 + length
    if total > V2_MAX:
        raise ProxyHeaderError(f"PROXY v2 header of {total} bytes (more than {V2_MAX})")
    if len(data) < total:
        return None
    if command == 0:  # LOCAL: the proxy's own connection; addresses are ignored
        return ProxyHeader(2, True, length=total)
    if transport != 1 or family not in (1, 2):
        raise ProxyHeaderError("PROXY v2 header for something else than TCP over IPv4/IPv6")
    size = 4 if family == 1 else 16
    if length < 2 * size + 4:
        raise ProxyHeaderError("PROXY v2 header too short for its addresses")
    body = data[16:total]
    kind = ipaddress.IPv4Address if family == 1 else ipaddress.IPv6Address
    client, server = kind(body[:size]), kind(body[size : 2 * size])
    sport = int.from_bytes(body[2 * size : 2 * size + 2], "big")
    dport = int.from_bytes(body[2 * size + 2 : 2 * size + 4], "big")
    return ProxyHeader(2, False, str(client), sport, str(server), dport, total)


def _shown(line: bytes) -> str:
    """The header as a log may show it: ASCII, control bytes escaped, cut short."""
    return repr(line[:V1_MAX].decode("ascii", "backslashreplace"))
