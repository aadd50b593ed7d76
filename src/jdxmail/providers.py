"""What jdxmail knows about the big mail providers, in one table.

Used by validate-config (username rules, ports), and by the diagnostics for hints and
host typo suggestions. Figures are the providers' published defaults.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

__all__ = [
    "PROVIDERS",
    "Provider",
    "ReplyHint",
    "provider_by_key",
    "provider_for_banner",
    "provider_for_host",
    "reply_hint",
    "suggest_host",
    "suggest_mail_domain",
]


@dataclass(frozen=True, slots=True)
class Provider:
    """A mail provider's SMTP submission facts."""

    key: str
    label: str
    hosts: tuple[str, ...]
    #: port → True for implicit TLS, False for STARTTLS
    ports: dict[int, bool]
    #: a fixed username the provider requires (SendGrid: ``apikey``), else None
    fixed_username: str | None = None
    username_is_address: bool = False
    daily_limit: int | None = None
    #: how to get the right password, shown with an authentication failure
    password_hint: str = ""
    #: pattern a host of this provider matches (SES has one host per region)
    host_pattern: str | None = None

    def matches(self, host: str) -> bool:
        """True when *host* is one of this provider's submission hosts."""
        name = host.strip().lower().rstrip(".")
        if name in self.hosts:
            return True
        return bool(self.host_pattern and re.fullmatch(self.host_pattern, name))


PROVIDERS: tuple[Provider, ...] = (
    Provider(
        key="gmail",
        label="Gmail",
        hosts=("smtp.gmail.com",),
        ports={587: False, 465: True},
        username_is_address=True,
        daily_limit=500,
        password_hint=(
            "Gmail needs an app password (16 letters, spaces allowed), not your Google "
            "password: turn on 2-Step Verification, then create one at "
            "https://myaccount.google.com/apppasswords"
        ),
    ),
    Provider(
        key="outlook",
        label="Outlook.com / Microsoft 365",
        hosts=("smtp-mail.outlook.com", "smtp.office365.com"),
        ports={587: False},
        username_is_address=True,
        daily_limit=300,
        password_hint=(
            "Outlook needs SMTP AUTH enabled for the mailbox and, with 2-step "
            "verification on, an app password"
        ),
    ),
    Provider(
        key="yahoo",
        label="Yahoo Mail",
        hosts=("smtp.mail.yahoo.com",),
        ports={587: False, 465: True},
        username_is_address=True,
        daily_limit=500,
        password_hint="Yahoo needs an app password from Account Security → Generate app password",
    ),
    Provider(
        key="sendgrid",
        label="SendGrid",
        hosts=("smtp.sendgrid.net",),
        ports={587: False, 25: False, 2525: False, 465: True},
        fixed_username="apikey",
        daily_limit=100,
        password_hint="SendGrid takes Username `apikey` and an API key (SG.…) as Password",
    ),
    Provider(
        key="ses",
        label="Amazon SES",
        hosts=(),
        ports={587: False, 2587: False, 25: False, 465: True, 2465: True},
        host_pattern=r"email-smtp(?:-fips)?\.[a-z0-9-]+\.amazonaws\.com",
        daily_limit=200,
        password_hint=(
            "Amazon SES needs SMTP credentials created in the SES console "
            "(SMTP settings → Create SMTP credentials), not IAM access keys"
        ),
    ),
    Provider(
        key="mailgun",
        label="Mailgun",
        hosts=("smtp.mailgun.org", "smtp.eu.mailgun.org"),
        ports={587: False, 465: True, 2525: False},
        username_is_address=True,
        password_hint="Mailgun takes the SMTP login and password of your sending domain",
    ),
    Provider(
        key="icloud",
        label="iCloud Mail",
        hosts=("smtp.mail.me.com",),
        ports={587: False},
        username_is_address=True,
        daily_limit=1000,
        password_hint="iCloud needs an app-specific password from appleid.apple.com",
    ),
    Provider(
        key="zoho",
        label="Zoho Mail",
        hosts=("smtp.zoho.com", "smtp.zoho.eu"),
        ports={587: False, 465: True},
        username_is_address=True,
    ),
)


def provider_for_host(host: str) -> Provider | None:
    """The provider whose submission host *host* is, or None."""
    return next((p for p in PROVIDERS if p.matches(host)), None)


def suggest_host(host: str) -> str | None:
    """A known provider host that *host* looks like a typo of (``smtp.gmial.com``)."""
    name = host.strip().lower().rstrip(".")
    if provider_for_host(name) is not None:
        return None
    known = [h for p in PROVIDERS for h in p.hosts]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
    return close[0] if close else None


#: mail domains of big providers, for a did-you-mean on a recipient domain typo
MAIL_DOMAINS: tuple[str, ...] = (
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "msn.com",
    "yahoo.com",
    "yahoo.co.jp",
    "icloud.com",
    "me.com",
    "aol.com",
    "mail.com",
    "gmx.com",
    "gmx.de",
    "gmx.net",
    "web.de",
    "proton.me",
    "protonmail.com",
    "zoho.com",
    "yandex.ru",
    "mail.ru",
    "qq.com",
    "163.com",
)


def suggest_mail_domain(domain: str) -> str | None:
    """A big provider's mail domain that *domain* looks like a typo of (``gmial.com``)."""
    name = domain.strip().lower().rstrip(".")
    if name in MAIL_DOMAINS:
        return None
    close = difflib.get_close_matches(name, MAIL_DOMAINS, n=1, cutoff=0.8)
    return close[0] if close else None


#: words in a banner or EHLO greeting that give the provider away (fake servers in tests
#: and the real ones answer the same)
_BANNER_MARKS = {
    "gsmtp": "gmail",
    "smtp.gmail.com": "gmail",
    "outlook.com": "outlook",
    "office365.com": "outlook",
    "yahoo": "yahoo",
    "sendgrid": "sendgrid",
    " sg esmtp": "sendgrid",
    "simpleemailservice": "ses",
    "amazonaws.com": "ses",
    "mailgun": "mailgun",
}

_SENDER_REFUSED = re.compile(
    r"5\.7\.60|not verified|verified sender identity|permissions? to send as|"
    r"sender (?:address )?(?:rejected|not allowed)|not owned by|not authori[sz]ed to send|"
    r"sender not allowed|from address does not match",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class ReplyHint:
    """What a provider's error reply means and how to fix it (a TROUBLESHOOTING-MAP row)."""

    row: str
    meaning: str
    fix: str


def provider_by_key(key: str) -> Provider | None:
    """The provider with *key* (``gmail``, ``sendgrid``…), or None."""
    return next((p for p in PROVIDERS if p.key == key.strip().lower()), None)


def provider_for_banner(text: str) -> Provider | None:
    """The provider whose greeting *text* is (``220 smtp.gmail.com ESMTP … - gsmtp``)."""
    lowered = " " + text.lower()
    for mark, key in _BANNER_MARKS.items():
        if mark in lowered:
            return provider_by_key(key)
    return None


def reply_hint(
    provider: Provider | None, stage: str, code: int, text: str, username: str | None = None
) -> ReplyHint | None:
    """The meaning of error reply *code* *text* at *stage* (``AUTH``, ``MAIL``…), or None.

    Knows Gmail's ``535 5.7.8`` (wrong or non-app password) and ``534 5.7.9`` (2-step
    verification), SendGrid's ``apikey`` username, SES SMTP credentials versus IAM keys,
    and the replies that refuse a sender the account may not use.
    """
    key = provider.key if provider else ""
    if stage == "AUTH":
        if code == 534 and ("5.7.9" in text or "InvalidSecondFactor" in text):
            return ReplyHint(
                "C5",
                "Gmail wants an app password: the account has no 2-Step Verification, or "
                "the account password was sent instead of an app password",
                "turn on 2-Step Verification for the Google account, then create an app "
                "password at https://myaccount.google.com/apppasswords and put it (16 "
                "letters) in Password",
            )
        if key == "sendgrid" and username != "apikey":
            return ReplyHint(
                "C6",
                f"SendGrid logs in with the Username `apikey`, not {username!r}",
                'set "Username": "apikey" and an API key (SG.…) as Password',
            )
        if key == "ses":
            iam = bool(username and re.fullmatch(r"AKIA[0-9A-Z]{16}", username))
            return ReplyHint(
                "C6",
                "Amazon SES refused the login"
                + (": this looks like an IAM access key pair" if iam else ""),
                provider.password_hint if provider else "",
            )
        if code == 535 and (key == "gmail" or "5.7.8" in text):
            hint = provider.password_hint if provider else ""
            return ReplyHint(
                "C4",
                "the server refused the username or password"
                + (" (Gmail: an app password is needed)" if key == "gmail" else ""),
                hint or "check Username and Password (or $JDXMAIL_RELAY_PASSWORD)",
            )
        if code in (535, 534) and provider is not None and provider.password_hint:
            return ReplyHint("C4", "the server refused the login", provider.password_hint)
        return None
    if stage in ("MAIL", "DATA", "RCPT") and code >= 500 and _SENDER_REFUSED.search(text):
        return ReplyHint(
            "C7",
            "the relay does not let this account send as this sender address",
            "send from the relay account's own address (or an address verified with the "
            "provider); jdxmail can rewrite the envelope sender to the relay account",
        )
    return None
