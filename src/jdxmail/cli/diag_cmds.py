"""``jdxmail check-port``, ``test-relay``, ``send-test``, ``auth-string`` and ``doctor``."""

from __future__ import annotations

import enum
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jdxmail.cli.common import (
    TIMEOUT_MAX,
    ConfigOption,
    JsonOption,
    port_option,
    read_password,
    timeout_option,
)
from jdxmail.cli.exitcodes import ExitCode, PortExit, RelayExit
from jdxmail.cli.render import (
    err_console,
    fail,
    out_console,
    print_json,
    render_findings,
    render_stages,
)

if TYPE_CHECKING:
    from jdxmail.diagnostics.port import PortReport
    from jdxmail.diagnostics.relay_probe import RelayReport, RelayTarget
    from jdxmail.findings import Finding
    from jdxmail.settings.files import LoadedConfig

__all__ = ["auth_string", "check_port", "doctor", "relay_test", "send_test"]


class TlsChoice(enum.StrEnum):
    """TLS modes on the command line."""

    starttls = "starttls"
    implicit = "implicit"
    none = "none"
    auto = "auto"


PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from one line of stdin."),
]
TimeoutOption = Annotated[
    float | None,
    timeout_option("Seconds to wait at each stage (default: the relay's TimeOut, 15)."),
]
CaOption = Annotated[
    Path | None,
    typer.Option(
        "--ca",
        metavar="PATH",
        help="PEM file of the CA that signed the server's certificate.",
        show_default=False,
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]
InsecureOption = Annotated[
    bool,
    typer.Option("--insecure", help="Do not verify the server's certificate (tests only)."),
]
UserOption = Annotated[
    str | None,
    typer.Option("--user", "-u", metavar="NAME", help="Log in as this user.", show_default=False),
]
FromOption = Annotated[
    str | None,
    typer.Option(
        "--from", metavar="ADDRESS", help="Envelope sender (MAIL FROM).", show_default=False
    ),
]


HostOption = Annotated[
    str | None,
    typer.Option(
        "--host",
        metavar="HOST[:PORT]",
        help="Server name or address; a port may follow (127.0.0.1:2525, [::1]:2525).",
        show_default=False,
    ),
]
NetworkAddressOption = Annotated[
    str | None,
    typer.Option(
        "--network-address",
        metavar="ADDRESS",
        help="When checking a running server: the non-loopback address of this host to "
        "connect to (default: the first one found on the interfaces).",
        show_default=False,
    ),
]


def _with_lines(findings: list[Finding], loaded: LoadedConfig | None) -> list[Finding]:
    """The findings with the config file's prefix and line numbers filled in."""
    if loaded is None or loaded.source.path is None:
        return findings
    source = loaded.source
    out = []
    for finding in findings:
        if finding.path and finding.line is None:
            path = finding.path
            out.append(replace(finding, path=(*source.prefix, *path), line=source.line_of(path)))
        else:
            out.append(finding)
    return out


def _load_quiet(config: Path | None) -> tuple[LoadedConfig | None, str | None]:
    """The settings, or None and the reason they cannot be loaded."""
    from jdxmail.settings.files import ConfigError, load_settings  # noqa: PLC0415

    try:
        return load_settings(config), None
    except ConfigError as error:
        return None, str(error)


# -- check-port ----------------------------------------------------------------------

_PORT_EXIT = {
    "free": PortExit.FREE,
    "answering": PortExit.FREE,
    "in-use": PortExit.IN_USE,
    "privilege": PortExit.PRIVILEGE,
}


def port_exit(report: PortReport) -> PortExit:
    """The exit code of check-port for *report*."""
    return _PORT_EXIT.get(report.status.value, PortExit.OTHER)


def _port_json(report: PortReport) -> dict[str, Any]:
    data = report.to_json()
    del data["ok"]
    return {**data, "exit_code": int(port_exit(report))}


def check_port(
    port: Annotated[int | None, port_option("Port (default: SmtpServer.Port).")] = None,
    bind: Annotated[
        str | None,
        typer.Option(
            "--bind",
            metavar="ADDRESS",
            help="Address (default: SmtpServer.BindAddress).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    listening: Annotated[
        bool,
        typer.Option(
            "--listening",
            help="Check that a running server answers (banner) from loopback and from the network.",
        ),
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            metavar="SECONDS",
            min=0,
            max=TIMEOUT_MAX,
            help="With --listening: keep trying this long while nothing listens yet (a "
            "server that is starting).",
            show_default=False,
        ),
    ] = 0.0,
    network_address: NetworkAddressOption = None,
    timeout: Annotated[
        float, timeout_option("With --listening: seconds to wait for each banner (default 5).")
    ] = 5.0,
    json_output: JsonOption = False,
) -> None:
    """Tell whether jdxmail can listen on its port now, and if not, why and how to fix it.

    Exit codes: 0 free (with --listening: answering), 1 in use, 2 no privilege for a
    port below 1024, 3 other (address not on this host, not answering, firewall, bad
    arguments, unreadable config).
    """
    import asyncio  # noqa: PLC0415

    from jdxmail.diagnostics import port as port_check  # noqa: PLC0415

    loaded: LoadedConfig | None = None
    if port is None or bind is None:
        loaded, problem = _load_quiet(config)
        if loaded is None:
            fail(
                problem or "the config cannot be read",
                "run `jdxmail validate-config`, or pass --port and --bind",
                PortExit.OTHER,
            )
        smtp = loaded.settings.smtp_server
        port = port if port is not None else smtp.port
        bind = bind if bind is not None else smtp.bind_address
    if listening:
        report = asyncio.run(
            port_check.check_listening(
                bind, port, other_address=network_address, wait=timeout, until=wait
            )
        )
    else:
        report = port_check.check_port(bind, port)
    report.findings = _with_lines(report.findings, loaded)
    code = port_exit(report)
    if json_output:
        print_json(_port_json(report))
        raise typer.Exit(int(code))
    if report.probes:
        render_stages(f"jdxmail on {bind}:{port}", report.probes)
    if report.ok:
        from rich.text import Text  # noqa: PLC0415

        for finding in report.findings:
            line = Text("✓ ", style="bold green").append(finding.message)
            if finding.row:
                line.append(f" [JDX-{finding.row}]", style="dim")
            out_console.print(line)
            if finding.fix:
                out_console.print(Text("  note: ", style="cyan").append(finding.fix))
    else:
        render_findings(f"check-port {bind}:{port}", report.findings)
    raise typer.Exit(int(code))


# -- test-relay ----------------------------------------------------------------------


def relay_exit(reports: list[RelayReport]) -> RelayExit:
    """The exit code for the first failing report (0 when all passed)."""
    for report in reports:
        if report.failed is not None:
            return RelayExit[report.failed.name]
    return RelayExit.OK


def _render_relay(report: RelayReport, *, transcript: bool = False) -> None:
    t = report.target
    provider = f", {t.provider.label}" if t.provider and t.provider.label not in t.label else ""
    where = f"[{t.host}]:{t.port}" if ":" in t.host else f"{t.host}:{t.port}"
    head = f"{t.name}: {where}" if t.name and t.name != where else where
    render_stages(f"{head} (TLS {t.tls.value}{provider})", report.stages)
    if transcript and report.transcript:
        out_console.print("transcript (secrets masked):", style="bold")
        for direction, line in report.transcript:
            arrow = "→" if direction == "C" else "←"
            out_console.print(f"  {arrow} {line}", markup=False)
    problems = [f for f in report.findings if f.severity.label != "info"]
    if problems:
        render_findings("  result", problems)
    else:
        out_console.print("  result: ok", style="bold green")


def _ask_password(user: str, from_stdin: bool) -> str:
    if not from_stdin and not sys.stdin.isatty():
        fail(
            f"a password is needed for {user!r} and stdin is not a terminal",
            "pass it on one line of standard input with --password-stdin (or set it in the "
            "config / its environment variable)",
            ExitCode.USAGE,
        )
    return read_password(from_stdin=from_stdin, confirm=False, what=f"Password for {user}")


def _load_or_usage(config: Path | None) -> LoadedConfig:
    """The settings, or the reason printed and exit 2 (the usage code of these commands)."""
    from jdxmail.cli.common import exit_for_config_error  # noqa: PLC0415
    from jdxmail.settings.files import ConfigError, load_settings  # noqa: PLC0415

    try:
        return load_settings(config)
    except ConfigError as error:
        exit_for_config_error(error)
        raise typer.Exit(int(ExitCode.USAGE)) from None


def _cli_target(
    provider: str | None,
    host: str | None,
    port: int | None,
    tls: TlsChoice | None,
    timeout: float | None,
) -> RelayTarget:
    from jdxmail.diagnostics.relay_probe import (  # noqa: PLC0415
        RelayTarget,
        TlsMode,
        provider_target,
    )
    from jdxmail.providers import provider_for_host  # noqa: PLC0415

    mode = TlsMode(tls.value) if tls is not None else None
    if provider is not None:
        target = provider_target(provider, port=port, tls=mode)
        if target is None:
            fail(
                f"unknown provider {provider!r}",
                "use one of gmail, outlook, yahoo, sendgrid, ses:REGION, mailgun, icloud, zoho",
                ExitCode.USAGE,
            )
        if host is not None:
            target = replace(target, host=host)
    else:
        assert host is not None
        chosen = port or 587
        default = TlsMode.IMPLICIT if chosen == 465 else TlsMode.STARTTLS
        target = RelayTarget(host, chosen, mode or default, provider=provider_for_host(host))
    return replace(target, timeout=timeout or target.timeout)


def relay_test(
    config: ConfigOption = None,
    relay: Annotated[
        str | None,
        typer.Option(
            "--relay", metavar="NAME", help="Only the relay with this Name.", show_default=False
        ),
    ] = None,
    provider: Annotated[
        str | None,
        typer.Option(
            "--provider",
            metavar="NAME",
            help="A known provider instead of the config: gmail, "
            "outlook, yahoo, sendgrid, ses:REGION, mailgun, icloud, zoho.",
            show_default=False,
        ),
    ] = None,
    host: HostOption = None,
    port: Annotated[
        int | None, port_option("Relay port (default: the config's, or 587 with --host).")
    ] = None,
    tls: Annotated[
        TlsChoice | None,
        typer.Option(
            "--tls",
            metavar="[starttls|implicit|none]",
            help="TLS mode (default: from the config or the port).",
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    user: UserOption = None,
    password_stdin: PasswordStdin = False,
    mail_from: FromOption = None,
    rcpt_to: Annotated[
        str | None,
        typer.Option(
            "--to", metavar="ADDRESS", help="Recipient to try (RCPT TO).", show_default=False
        ),
    ] = None,
    send: Annotated[
        bool, typer.Option("--send", help="Also send a small test message (needs --from and --to).")
    ] = False,
    ca: CaOption = None,
    insecure: InsecureOption = False,
    timeout: TimeoutOption = None,
    json_output: JsonOption = False,
) -> None:
    """Walk an SMTP session with the relay(s) stage by stage and explain the first failure.

    Stages: DNS, TCP connect, banner, EHLO, TLS, EHLO after TLS, AUTH, MAIL FROM, RCPT
    TO, DATA (only with --send), QUIT. The exit code names the failing stage (see
    docs/test-relay.md): 10 DNS, 11 connect, 12 banner, 13 EHLO, 14 TLS, 15 EHLO after
    TLS, 16 AUTH, 17 MAIL FROM, 18 RCPT TO, 19 DATA; 2 bad arguments or config.
    """
    import asyncio  # noqa: PLC0415

    from pydantic import SecretStr  # noqa: PLC0415

    from jdxmail.diagnostics.relay_probe import (  # noqa: PLC0415
        ProbeOptions,
        TlsMode,
        config_targets,
        probe_relay,
    )

    host, port = _host_and_port(host, port)
    if send and (mail_from is None or rcpt_to is None):
        fail("--send needs --from and --to", code=ExitCode.USAGE)
    if tls is TlsChoice.auto:
        fail("--tls takes starttls, implicit or none here", code=ExitCode.USAGE)
    loaded: LoadedConfig | None = None
    if provider is None and host is None:
        loaded = _load_or_usage(config)
        settings = loaded.settings
        relays = settings.relays
        if not relays:
            fail(
                "the config has no relay (RelayServer / RelayServers)",
                "add one, or test a provider directly: `jdxmail test-relay --provider gmail "
                "--user you@gmail.com`",
                ExitCode.USAGE,
            )
        targets = [
            target
            for target in config_targets(settings)
            if relay is None or relay.casefold() == target.name.casefold()
        ]
        if not targets:
            names = ", ".join(r.display_name for r in relays)
            fail(f"no relay named {relay!r}", f"use one of: {names}", ExitCode.USAGE)
    else:
        targets = [_cli_target(provider, host, port, tls, timeout)]
    prepared = []
    for target in targets:
        changes: dict[str, Any] = {}
        if user is not None:
            changes["username"] = user
        if user is not None or (target.username and target.password is None):
            changes["password"] = SecretStr(
                _ask_password(user or target.username or "", password_stdin)
            )
        if ca is not None:
            changes["ca_file"] = ca
        if insecure:
            changes["verify"] = False
        if timeout is not None:
            changes["timeout"] = timeout
        if provider is None and host is None:
            # overrides of the config's relay: "what if it were port 465 / implicit TLS?"
            if tls is not None:
                changes["tls"] = TlsMode(tls.value)
            if port is not None:
                changes["port"] = port
        prepared.append(replace(target, **changes))
    options = ProbeOptions(mail_from=mail_from, rcpt_to=rcpt_to, send=send)

    async def run_all() -> list[RelayReport]:
        return [await probe_relay(t, options) for t in prepared]

    reports = asyncio.run(run_all())
    for report in reports:
        report.findings = _with_lines(report.findings, loaded)
    code = relay_exit(reports)
    if json_output:
        print_json(
            {
                "ok": code is RelayExit.OK,
                "exit_code": int(code),
                "relays": [r.to_json() for r in reports],
            }
        )
    else:
        for report in reports:
            _render_relay(report)
    raise typer.Exit(int(code))


# -- send-test -----------------------------------------------------------------------


def split_host_port(value: str, flag: str = "--host") -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address → (host, port).

    Exits 2 (bad arguments) when the port is not a number from 1 to 65535.
    """
    text = value.strip()
    host, port_text = text, ""
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            fail(f"{flag} {value!r} is not HOST or HOST:PORT", "e.g. [::1]:2525", ExitCode.USAGE)
        host, port_text = inner, rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif text.count(":") > 1:
        host = text  # a bare IPv6 address: a port needs the brackets, [::1]:2525
    if not host:
        fail(f"{flag} {value!r} names no host", "e.g. 127.0.0.1:2525", ExitCode.USAGE)
    if text.startswith("[") or text.count(":") == 1:
        if port_text == "" and not text.startswith("["):
            fail(f"{flag} {value!r}: the port after ':' is missing", code=ExitCode.USAGE)
        if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
            fail(
                f"{flag} {value!r}: {port_text!r} is not a port (1-65535)",
                "e.g. 127.0.0.1:2525",
                ExitCode.USAGE,
            )
    return host, int(port_text) if port_text else None


def _host_and_port(host: str | None, port: int | None) -> tuple[str | None, int | None]:
    """--host (maybe with a port) and --port together; they must not disagree."""
    if host is None:
        return None, port
    name, embedded = split_host_port(host)
    if embedded is not None and port is not None and embedded != port:
        fail(
            f"--host {host!r} and --port {port} name different ports",
            "give the port once: in --host HOST:PORT or with --port",
            ExitCode.USAGE,
        )
    return name, embedded if embedded is not None else port


def send_test(
    rcpt_to: Annotated[
        str, typer.Option("--to", metavar="ADDRESS", help="Recipient of the test message.")
    ],
    mail_from: FromOption = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            metavar="HOST[:PORT]",
            help="The server (default: the local jdxmail from the config, BindAddress); a "
            "port may follow (127.0.0.1:2525, [::1]:2525).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None, port_option("The server's port (default: SmtpServer.Port).")
    ] = None,
    server: Annotated[
        str | None,
        typer.Option("--server", hidden=True, help="Old spelling of --host HOST:PORT."),
    ] = None,
    user: UserOption = None,
    password_stdin: PasswordStdin = False,
    tls: Annotated[
        TlsChoice,
        typer.Option(
            "--tls",
            metavar="[starttls|implicit|none|auto]",
            help="TLS mode; auto: STARTTLS when offered.",
            case_sensitive=False,
        ),
    ] = TlsChoice.auto,
    ca: CaOption = None,
    insecure: InsecureOption = False,
    transcript: Annotated[
        bool, typer.Option("--transcript", help="Show the SMTP conversation (secrets masked).")
    ] = False,
    config: ConfigOption = None,
    timeout: TimeoutOption = None,
    json_output: JsonOption = False,
) -> None:
    """Send one test message through a server and show the SMTP transcript and final reply.

    The exit code names the failing stage, as for test-relay (0: the server took it).
    """
    import asyncio  # noqa: PLC0415

    from pydantic import SecretStr  # noqa: PLC0415

    from jdxmail.diagnostics.port import connect_address  # noqa: PLC0415
    from jdxmail.diagnostics.relay_probe import (  # noqa: PLC0415
        ProbeOptions,
        RelayTarget,
        TlsMode,
        probe_relay,
    )

    mode = TlsMode(tls.value)
    if server is not None:  # the old spelling of --host HOST:PORT
        if host is not None or port is not None:
            fail("give --host and --port, not --server too", code=ExitCode.USAGE)
        if split_host_port(server, "--server")[1] is None:
            fail(
                f"--server {server!r} is not HOST:PORT",
                "e.g. --host 127.0.0.1 --port 2525 (or --host 127.0.0.1:2525)",
                ExitCode.USAGE,
            )
        host = server
    host, port = _host_and_port(host, port)
    if host is None or port is None:
        smtp = _load_or_usage(config).settings.smtp_server
        host = host or connect_address(smtp.bind_address)
        if port is None:
            port = smtp.port
            if mode is TlsMode.IMPLICIT and smtp.tls.implicit_tls_port:
                port = smtp.tls.implicit_tls_port
    password = SecretStr(_ask_password(user, password_stdin)) if user else None
    target = RelayTarget(
        host,
        port,
        mode,
        user,
        password,
        ca,
        not insecure,
        timeout or 15.0,
        name="send-test",
        local=True,
    )
    sender = mail_from or (user if user and "@" in user else "jdxmail-test@localhost")
    options = ProbeOptions(mail_from=sender, rcpt_to=rcpt_to, send=True)
    report = asyncio.run(probe_relay(target, options))
    code = relay_exit([report])
    if json_output:
        data = report.to_json()
        data["exit_code"] = int(code)
        if transcript:
            data["transcript"] = [f"{d}: {line}" for d, line in report.transcript]
        print_json(data)
    else:
        _render_relay(report, transcript=transcript)
        if report.final_reply:
            out_console.print(f"final reply: {report.final_reply}", markup=False)
    raise typer.Exit(int(code))


# -- auth-string ---------------------------------------------------------------------


def auth_string(
    user: Annotated[str, typer.Argument(metavar="USER", help="The user name to log in as.")],
    password_stdin: PasswordStdin = False,
    json_output: JsonOption = False,
) -> None:
    """Print the base64 lines for a manual AUTH PLAIN / AUTH LOGIN session (telnet, openssl).

    The lines hold the password (base64 is an encoding, not encryption): do not paste
    them into tickets or chats.
    """
    from jdxmail.diagnostics.authstring import auth_lines  # noqa: PLC0415

    password = read_password(from_stdin=password_stdin, confirm=False)
    lines = auth_lines(user, password)
    if json_output:
        print_json({"plain": lines.plain, "login": list(lines.login)})
        return
    err_console.print(
        "note: these lines contain the password (base64 is reversible); do not share them"
    )
    out_console.print("# AUTH PLAIN: send this one line after EHLO, expect 235", markup=False)
    out_console.print(lines.plain, markup=False)
    out_console.print("", markup=False)
    out_console.print("# AUTH LOGIN: send each line after the server's 334", markup=False)
    for line in lines.login:
        out_console.print(line, markup=False)


# -- doctor --------------------------------------------------------------------------


def doctor(
    config: ConfigOption = None,
    timeout: TimeoutOption = None,
    network_address: NetworkAddressOption = None,
    json_output: JsonOption = False,
) -> None:
    """Run every check: config, port, relays, config-file writability, logs, spool.

    Prints one report with a row per TROUBLESHOOTING-MAP id (`JDX-A1 ✓ port 2525 free`)
    and the fixes of the failures. Exit 0 when nothing failed, 1 otherwise.
    """
    import asyncio  # noqa: PLC0415

    from jdxmail.diagnostics.doctor import run_doctor  # noqa: PLC0415

    report = asyncio.run(run_doctor(config, relay_timeout=timeout, network_address=network_address))
    code = ExitCode.OK if report.ok else ExitCode.FAILED
    if json_output:
        print_json(report.to_json())
        raise typer.Exit(int(code))
    from rich.text import Text  # noqa: PLC0415

    out_console.print(Text(f"jdxmail doctor: {report.config_name}", style="bold"))
    for row in report.rows:
        line = Text(f"  {row.label:<10} ")
        if row.ok is True:
            line.append("✓", style="bold green")
        elif row.ok is False:
            line.append("✗", style="bold red")
        else:
            line.append("!", style="yellow")
        line.append(f" {row.summary}")
        out_console.print(line)
        if row.ok is not True and row.fix:
            out_console.print(Text("               fix: ", style="green").append(row.fix))
    failed = sum(1 for r in report.rows if r.ok is False)
    summary = "all checks passed" if failed == 0 else f"{failed} check(s) failed"
    out_console.print(Text(summary, style="bold green" if failed == 0 else "bold red"))
    if sys.stdout.isatty() and failed:
        out_console.print(
            "details: `jdxmail test-relay`, `jdxmail check-port`, `jdxmail validate-config`"
        )
    raise typer.Exit(int(code))
