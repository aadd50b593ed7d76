"""Every reply the SMTP server sends: code, enhanced status code (RFC 3463) and text.

The server never writes a reply that is not built from this table, so docs/serve.md
can list everything a client may see. Texts with ``{name}`` fields are filled with
:meth:`Reply.format`; nothing secret is ever put into a reply.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALL_REPLIES", "Reply", "ehlo_reply"]


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: a three-digit code, an enhanced status code (or "") and text."""

    code: int
    status: str
    text: str

    def format(self, **fields: object) -> Reply:
        """The same reply with ``{name}`` fields of the text filled in."""
        return Reply(self.code, self.status, self.text.format(**fields))

    def __str__(self) -> str:
        return (
            f"{self.code} {self.status} {self.text}" if self.status else f"{self.code} {self.text}"
        )

    def encode(self) -> bytes:
        """The reply as sent on the wire, with CRLF."""
        return str(self).encode("utf-8", "replace") + b"\r\n"


def ehlo_reply(host_name: str, keywords: list[str]) -> bytes:
    """The multi-line 250 reply to EHLO: the host name, then one keyword per line."""
    lines = [host_name, *keywords]
    out = [f"250-{line}" for line in lines[:-1]]
    out.append(f"250 {lines[-1]}")
    return ("\r\n".join(out) + "\r\n").encode("utf-8", "replace")


# -- connection ---------------------------------------------------------------------
#: the greeting; enhanced codes are not used in it (RFC 2034 §3)
BANNER = Reply(220, "", "{host} ESMTP jdxmail SMTP Server Ready")
BYE = Reply(221, "2.0.0", "Bye")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "{host} Too many connections, try again later")
TIMEOUT = Reply(421, "4.4.2", "{host} Timeout waiting for a command, closing connection")
DATA_TIMEOUT = Reply(421, "4.4.2", "{host} Message data arriving too slowly, closing connection")
TOO_MANY_FROM_CLIENT = Reply(
    421, "4.7.0", "{host} Too many connections from your address, try again later"
)
SHUTTING_DOWN = Reply(421, "4.3.2", "{host} Service shutting down, try again later")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "{host} Too many bad commands, closing connection")

# -- greeting and simple commands -------------------------------------------------
HELO_OK = Reply(250, "", "{host}")
OK = Reply(250, "2.0.0", "OK")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
VRFY_CANNOT = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP AUTH STARTTLS",
)

# -- syntax -------------------------------------------------------------------------
UNKNOWN_COMMAND = Reply(500, "5.5.2", "Command not recognized")
#: RFC 5321 4.5.3.1.4 "500 Line too long"; sent as soon as the limit is passed
LINE_TOO_LONG = Reply(500, "5.5.6", "Line too long (limit 512 bytes)")
NOT_UTF8 = Reply(500, "5.5.2", "Command is not valid UTF-8")
BARE_LINE_ENDING_COMMAND = Reply(500, "5.5.2", "Command must end with CRLF")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
SYNTAX_HELO = Reply(501, "5.5.4", "Syntax: {verb} hostname")
BAD_HELO_NAME = Reply(501, "5.5.4", "Invalid {verb} name")
SYNTAX_MAIL = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
SYNTAX_RCPT = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
SYNTAX_NO_ARGUMENT = Reply(501, "5.5.4", "Syntax: {verb} takes no argument")
BAD_ADDRESS = Reply(553, "5.1.3", "Malformed address: {detail}")
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Parameter not recognized: {name}")
BAD_PARAMETER = Reply(501, "5.5.4", "Invalid parameter value: {name}")

# -- sequence -----------------------------------------------------------------------
NEED_HELO = Reply(503, "5.5.1", "Send EHLO or HELO first")
NEED_EHLO = Reply(503, "5.5.1", "AUTH needs EHLO (not HELO) first")
NEED_MAIL = Reply(503, "5.5.1", "Send MAIL first")
NEED_RCPT = Reply(503, "5.5.1", "Send RCPT first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already given; send RSET to start over")

# -- transaction --------------------------------------------------------------------
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
RECIPIENT_DOMAIN_UNKNOWN = Reply(
    550, "5.1.2", "Recipient domain {domain} {reason}; check the address{hint}"
)
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
#: RFC 3030: each BDAT chunk but the LAST one
CHUNK_OK = Reply(250, "2.0.0", "{size} octets received")
SYNTAX_BDAT = Reply(501, "5.5.4", "Syntax: BDAT size [LAST]; closing connection")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA not allowed after BDAT; send RSET")
QUEUED = Reply(250, "2.0.0", "OK: queued as {queue_id}")
STORE_FAILED = Reply(451, "4.3.0", "Could not store the message; try again later")
STORE_FULL = Reply(452, "4.3.1", "Insufficient system storage; try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients (limit {limit})")
TOO_BIG = Reply(552, "5.3.4", "Message too big (limit {limit} bytes)")
BARE_LINE_ENDING = Reply(
    550,
    "5.6.0",
    "Message contains a bare CR or LF; lines must end with CRLF (SMTP smuggling protection)",
)
NUL_BYTE = Reply(550, "5.6.0", "Message contains a NUL byte (not allowed in mail, RFC 5321 2.3.8)")
DATA_LINE_TOO_LONG = Reply(
    550, "5.6.0", "Message has a line longer than 1000 bytes (RFC 5321 4.5.3.1.6)"
)
RELAY_DENIED = Reply(530, "5.7.0", "Authentication required")
SENDER_NOT_ALLOWED = Reply(553, "5.7.1", "Sender address not allowed for user {user}")

# -- AUTH (RFC 4954) ----------------------------------------------------------------
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode base64")
AUTH_BAD_PLAIN = Reply(501, "5.5.2", "AUTH PLAIN needs authzid NUL user NUL password")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH is not allowed during a mail transaction")
AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_NOT_AVAILABLE = Reply(502, "5.5.1", "AUTH not available: this server has no users")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_THROTTLED = Reply(421, "4.7.0", "Too many failed logins from your address; try again later")
#: the AUTH LOGIN prompts as a telnet user of the guide sees them
AUTH_LOGIN_USERNAME = Reply(334, "", "VXNlcm5hbWU6")
AUTH_LOGIN_PASSWORD = Reply(334, "", "UGFzc3dvcmQ6")
AUTH_PLAIN_CONTINUE = Reply(334, "", "")

# -- STARTTLS (RFC 3207) ------------------------------------------------------------
TLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
TLS_ALREADY = Reply(503, "5.5.1", "TLS already active")

# -- chaos (the dev inbox's failure injection, off by default; docs/web.md) -----------
CHAOS_451 = Reply(451, "4.3.0", "Chaos: temporary failure injected by jdxmail, try again")
CHAOS_452 = Reply(452, "4.3.1", "Chaos: insufficient storage injected by jdxmail, try again")
CHAOS_535 = Reply(535, "5.7.8", "Chaos: authentication failure injected by jdxmail")
CHAOS_421 = Reply(421, "4.3.2", "Chaos: jdxmail closes the connection (injected failure)")

#: every reply, by name, for docs and tests
ALL_REPLIES: dict[str, Reply] = {
    name: value for name, value in dict(globals()).items() if isinstance(value, Reply)
}
