"""Checks of one message for app developers, without any outside service.

Links with their targets, images without ``alt``, a missing plain-text part, the
HTML's size, and the features mail clients drop: a short fixed table of what the
common clients (Gmail, Outlook, Apple Mail) are known to remove or ignore. The
table is deliberately small and conservative; it says what to look at, not a score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Literal
from urllib.parse import urlsplit

from jdxmail.inbox.message import ParsedMessage

__all__ = ["CheckReport", "Finding", "Image", "Link", "check_message"]

Severity = Literal["error", "warning", "info"]

#: Gmail clips a message whose HTML is larger than this ("[Message clipped]")
GMAIL_CLIP_BYTES = 102 * 1024
_URL_IN_TEXT = re.compile(r"\bhttps?://[^\s<>\"')\]]+", re.IGNORECASE)
_LOCAL_HOSTS = re.compile(r"^(localhost|127\.\d+\.\d+\.\d+|\[?::1\]?|0\.0\.0\.0)$|\.local$")


@dataclass(frozen=True, slots=True)
class _Feature:
    code: str
    pattern: re.Pattern[str]
    what: str
    clients: str


#: (in tags, attributes or CSS) what mail clients drop; matched on the lower-cased HTML
_FEATURES = (
    _Feature("script", re.compile(r"<script\b"), "<script>", "every mail client removes it"),
    _Feature("form", re.compile(r"<form\b"), "<form>", "Gmail and Outlook disable or remove it"),
    _Feature(
        "video", re.compile(r"<(video|audio)\b"), "<video>/<audio>", "Gmail and Outlook omit it"
    ),
    _Feature(
        "iframe",
        re.compile(r"<(iframe|object|embed)\b"),
        "<iframe>/<object>/<embed>",
        "every mail client removes it",
    ),
    _Feature(
        "external-css",
        re.compile(r"<link\b[^>]*\bstylesheet\b|@import\b"),
        "external style sheet (<link rel=stylesheet>, @import)",
        "Gmail and Outlook do not load it: inline the CSS",
    ),
    _Feature(
        "position",
        re.compile(r"position\s*:\s*(fixed|absolute|sticky)"),
        "position: fixed/absolute/sticky",
        "Gmail and Outlook ignore it",
    ),
    _Feature(
        "flex-grid",
        re.compile(r"display\s*:\s*(inline-)?(flex|grid)"),
        "display: flex/grid",
        "Outlook for Windows ignores it: use tables for layout",
    ),
    _Feature(
        "background-image",
        re.compile(r"background(-image)?\s*:[^;\"']*url\("),
        "CSS background image",
        "Outlook for Windows does not show it",
    ),
    _Feature("svg", re.compile(r"<svg\b"), "inline <svg>", "Gmail and Outlook do not show it"),
    _Feature(
        "javascript-url",
        re.compile(r"href\s*=\s*[\"']?\s*javascript:"),
        "javascript: link",
        "every mail client removes or blocks it",
    ),
)


@dataclass(frozen=True, slots=True)
class Link:
    """A link of the message: where it points and what it says."""

    href: str
    text: str
    source: Literal["html", "text"]
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Image:
    """An image of the HTML: its source and alt text (None: no alt attribute)."""

    src: str
    alt: str | None


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing to look at: a code, how serious, what and why."""

    code: str
    severity: Severity
    message: str
    count: int = 1


@dataclass(slots=True)
class CheckReport:
    """The checks of one message."""

    html_size: int
    text_size: int
    links: list[Link] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


class _Collector(HTMLParser):
    """Collects links (href and text) and images (src and alt) of an HTML body."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, list[str]]] = []
        self.images: list[Image] = []
        self._open: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and "href" in values:
            link: tuple[str, list[str]] = ((values["href"] or "").strip(), [])
            self.links.append(link)
            self._open.append(link)
        elif tag == "img":
            self.images.append(Image(src=(values.get("src") or "").strip(), alt=values.get("alt")))
            if self._open:
                self._open[-1][1].append(f"[image: {values.get('alt') or 'no alt'}]")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][1].append(data)


def _link_problem(href: str) -> str | None:
    if not href or href == "#":
        return "empty link"
    parts = urlsplit(href)
    scheme = parts.scheme.lower()
    if scheme == "javascript":
        return "javascript: links are removed by mail clients"
    if scheme == "http":
        problem = "plain http: (not https)"
    elif scheme in ("https", "mailto", "tel", "cid"):
        problem = None
    elif not scheme:
        return "relative link: it has no site to be relative to in a mail"
    else:
        return None
    host = (parts.hostname or "").lower()
    if host and _LOCAL_HOSTS.search(host):
        return "points at this machine (localhost): recipients cannot open it"
    return problem


def check_message(message: ParsedMessage) -> CheckReport:
    """Run every check on *message*."""
    html = message.html or ""
    text = message.text or ""
    report = CheckReport(html_size=len(html.encode("utf-8")), text_size=len(text.encode("utf-8")))
    findings = report.findings
    if html:
        collector = _Collector()
        try:
            collector.feed(html)
            collector.close()
        except (ValueError, AssertionError):  # very broken markup: what was read counts
            pass
        for href, words in collector.links:
            label = " ".join("".join(words).split())
            report.links.append(Link(href, label, "html", _link_problem(href)))
        report.images = collector.images
        if not text.strip():
            findings.append(
                Finding(
                    "no-text-part",
                    "warning",
                    "no plain-text part: text-only clients and some spam filters see nothing; "
                    "send multipart/alternative with a text/plain part",
                )
            )
        if report.html_size > GMAIL_CLIP_BYTES:
            findings.append(
                Finding(
                    "html-size",
                    "warning",
                    f"the HTML is {report.html_size // 1024} KiB: Gmail clips messages over "
                    f"{GMAIL_CLIP_BYTES // 1024} KiB and hides the rest",
                )
            )
        missing_alt = [i for i in report.images if i.alt is None]
        if missing_alt:
            findings.append(
                Finding(
                    "img-alt",
                    "warning",
                    "images without alt text: shown as nothing while images are blocked "
                    "and read as nothing by screen readers",
                    len(missing_alt),
                )
            )
        lowered = html.lower()
        for feature in _FEATURES:
            count = len(feature.pattern.findall(lowered))
            if count:
                findings.append(
                    Finding(
                        f"feature-{feature.code}",
                        "warning",
                        f"{feature.what}: {feature.clients}",
                        count,
                    )
                )
    elif not text.strip() and not message.attachments:
        findings.append(Finding("empty", "warning", "the message has no text and no HTML body"))
    if text:
        seen = {link.href for link in report.links}
        for url in _URL_IN_TEXT.findall(text):
            if url not in seen:
                seen.add(url)
                report.links.append(Link(url, "", "text", _link_problem(url)))
    bad_links = [link for link in report.links if link.problem]
    if bad_links:
        findings.append(
            Finding(
                "links",
                "warning",
                f"{len(bad_links)} link{'' if len(bad_links) == 1 else 's'} to look at: see the "
                "problem beside each link",
                len(bad_links),
            )
        )
    if not message.summary.subject:
        findings.append(Finding("no-subject", "info", "no Subject header"))
    return report
