"""Policy decisions for client addresses that tests cannot connect from (off loopback)."""

from __future__ import annotations

from pathlib import Path

from jdxmail import replies
from jdxmail.server.policy import AuthThrottle, Policy, Route
from tests.server.conftest import make_settings, user_entry

LAN = "192.0.2.10"  # TEST-NET-1: never routed, used only as a value here


def policy(tmp_path: Path, *, tls: bool, relays: bool = True, **smtp: object) -> Policy:
    """A Policy for the given SmtpServer keys."""
    settings = make_settings(tmp_path, **smtp)
    return Policy(settings.smtp_server, relays_configured=relays, tls_available=tls)


def test_off_loopback_auth_waits_for_tls_when_tls_is_configured(tmp_path: Path) -> None:
    """Off loopback with TLS configured, AUTH is refused with 538 5.7.11 until TLS is on."""
    p = policy(tmp_path, tls=True, Users=[user_entry()])
    before = p.auth_availability(client_ip=LAN, tls_active=False)
    assert not before.offered
    assert before.refusal == replies.AUTH_NEEDS_TLS
    assert str(before.refusal) == (
        "538 5.7.11 Encryption required for requested authentication mechanism"
    )
    assert p.auth_availability(client_ip=LAN, tls_active=True).offered
    assert p.auth_availability(client_ip="127.0.0.1", tls_active=False).offered
    assert p.auth_availability(client_ip="::1", tls_active=False).offered
    assert p.auth_availability(client_ip="::ffff:127.0.0.1", tls_active=False).offered


def test_allow_plaintext_auth_opens_auth_before_tls(tmp_path: Path) -> None:
    """AllowPlaintextAuth offers AUTH to LAN clients before STARTTLS."""
    p = policy(tmp_path, tls=True, Users=[user_entry()], AllowPlaintextAuth=True)
    assert p.auth_availability(client_ip=LAN, tls_active=False).offered


def test_without_tls_auth_stays_available_off_loopback(tmp_path: Path) -> None:
    """With no TLS configured at all, AUTH works in plaintext as in the guide's setup."""
    p = policy(tmp_path, tls=False, Users=[user_entry()])
    assert p.auth_availability(client_ip=LAN, tls_active=False).offered


def test_no_users_means_no_auth(tmp_path: Path) -> None:
    """Without users AUTH is never offered, with the 502 reply."""
    p = policy(tmp_path, tls=True)
    decision = p.auth_availability(client_ip="127.0.0.1", tls_active=True)
    assert not decision.offered
    assert decision.refusal == replies.AUTH_NOT_AVAILABLE


def test_relay_rules_for_lan_clients(tmp_path: Path) -> None:
    """A LAN client may reach local domains; other domains need AUTH or a trusted network."""
    p = policy(tmp_path, tls=False, LocalDomains=["corp.example"])
    assert p.may_send_to("a@corp.example", client_ip=LAN, authenticated=False)
    assert p.may_send_to("a@CORP.example.", client_ip=LAN, authenticated=False)
    assert not p.may_send_to("a@gmail.com", client_ip=LAN, authenticated=False)
    assert p.may_send_to("a@gmail.com", client_ip=LAN, authenticated=True)
    trusted = policy(tmp_path, tls=False, TrustedNetworks=["192.0.2.0/24"])
    assert trusted.may_send_to("a@gmail.com", client_ip=LAN, authenticated=False)
    assert not trusted.may_send_to("a@gmail.com", client_ip="198.51.100.1", authenticated=False)
    assert not trusted.may_send_to("a@gmail.com", client_ip="garbage", authenticated=False)


def test_routing_local_relay_and_dev_inbox(tmp_path: Path) -> None:
    """Local domains go to mailboxes; others to the relay, or to mailboxes with no relay."""
    with_relay = policy(tmp_path, tls=False, relays=True)
    assert with_relay.route("a@localhost") is Route.LOCAL
    assert with_relay.route("a@mx.test") is Route.LOCAL
    assert with_relay.route("postmaster") is Route.LOCAL
    assert with_relay.route("a@gmail.com") is Route.RELAY
    dev_inbox = policy(tmp_path, tls=False, relays=False)
    assert dev_inbox.route("a@gmail.com") is Route.LOCAL


def test_throttle_window_forgets_old_failures() -> None:
    """Failures older than AuthFailureWindow no longer count."""
    now = [1000.0]
    throttle = AuthThrottle(limit=2, window=60, clock=lambda: now[0])
    assert throttle.record_failure(LAN, "app@example.com") == 1
    assert not throttle.blocked(LAN, "app@example.com")
    assert throttle.record_failure(LAN, "APP@example.com") == 2
    assert throttle.blocked(LAN, "app@example.com")
    assert not throttle.blocked(LAN, "other@example.com")
    assert not throttle.blocked("198.51.100.1", "app@example.com")
    now[0] += 61
    assert not throttle.blocked(LAN, "app@example.com")
    assert throttle.failures(LAN) == 0


def test_throttle_blocks_an_address_failing_over_many_names() -> None:
    """An address failing for many names is blocked for every name, the right one too."""
    throttle = AuthThrottle(limit=2, window=60)
    for index in range(throttle.address_limit):
        assert not throttle.address_blocked(LAN)
        throttle.record_failure(LAN, f"guess{index}@example.com")
    assert throttle.address_blocked(LAN)
    assert throttle.blocked(LAN, "never-tried@example.com")
