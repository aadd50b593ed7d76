"""Loading settings: lookup order, JSON/TOML/Jdx layouts, defaults, secrets, environment."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from jdxmail.passwords import HashType
from jdxmail.settings.files import (
    ConfigFileError,
    ConfigInvalidError,
    ConfigParseError,
    find_config,
    load_settings,
)
from tests.conftest import WriteConfig

GUIDE_JSON = """\
{
  "SmtpServer": {
    "Enabled": true,
    "BindAddress": "0.0.0.0",
    "Port": 2525,
    "TimeOut": 60,
    "Users": [
      {
        "UserName": "test@example.com",
        "Password": "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
        "HashType": "SHA256"
      }
    ]
  },
  "RelayServer": {
    "Host": "smtp.gmail.com",
    "Port": 587,
    "UseTls": true,
    "Username": "your-email@gmail.com",
    "Password": "abcd efgh ijkl mnop"
  }
}
"""

GUIDE_TOML = """\
[SmtpServer]
Enabled = true
BindAddress = "0.0.0.0"
Port = 2525
TimeOut = 60

[[SmtpServer.Users]]
UserName = "test@example.com"
Password = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
HashType = "SHA256"

[RelayServer]
Host = "smtp.gmail.com"
Port = 587
UseTls = true
Username = "your-email@gmail.com"
Password = "abcd efgh ijkl mnop"
"""


def test_no_config_gives_a_loopback_dev_inbox(tmp_path: Path) -> None:
    """With no file anywhere, the built-in default listens on 127.0.0.1:2525 and trusts loopback."""
    loaded = load_settings()
    smtp = loaded.settings.smtp_server
    assert loaded.source.path is None
    assert (smtp.bind_address, smtp.port, smtp.enabled) == ("127.0.0.1", 2525, True)
    assert ipaddress.ip_network("127.0.0.0/8") in smtp.trusted_networks
    assert loaded.settings.relays == []
    assert loaded.settings.paths.mailbox == tmp_path / "data/smtp/mailbox"
    assert smtp.time_out == 30
    assert "localhost" in smtp.effective_local_domains


def test_guide_json_is_read(write_config: WriteConfig) -> None:
    """The guide's appsettings.json keys load into the settings."""
    write_config(GUIDE_JSON)
    settings = load_settings().settings
    assert settings.smtp_server.port == 2525
    assert settings.smtp_server.time_out == 60
    user = settings.smtp_server.users[0]
    assert (user.user_name, user.hash_type) == ("test@example.com", HashType.SHA256)
    relay = settings.relays[0]
    assert (relay.host, relay.port, relay.use_tls) == ("smtp.gmail.com", 587, True)


def test_toml_with_the_same_keys_gives_the_same_settings(write_config: WriteConfig) -> None:
    """jdxmail.toml with the guide's keys loads to exactly the settings of appsettings.json."""
    from_json = load_settings(write_config(GUIDE_JSON)).settings
    from_toml = load_settings(write_config(GUIDE_TOML, name="jdxmail.toml")).settings
    assert from_json == from_toml


def test_jdx_wrapper_and_case_insensitive_keys(write_config: WriteConfig) -> None:
    """Sections under a top-level "Jdx" object and keys in any case are read (the .NET way)."""
    write_config('{"Jdx": {"smtpserver": {"PORT": 2600, "bindaddress": "127.0.0.1"}}}')
    settings = load_settings().settings
    assert settings.smtp_server.port == 2600


def test_lookup_order(tmp_path: Path, write_config: WriteConfig) -> None:
    """--config wins over $JDXMAIL_CONFIG, which wins over ./appsettings.json, then ./jdxmail.toml."""
    write_config(GUIDE_TOML, name="jdxmail.toml")
    assert find_config() == Path("jdxmail.toml")  # found here: named as the user would
    write_config(GUIDE_JSON)
    assert find_config() == Path("appsettings.json")
    other = write_config("{}", name="other.json")
    assert find_config(environ={"JDXMAIL_CONFIG": str(other)}) == other
    explicit = tmp_path / "explicit.json"
    assert find_config(explicit, environ={"JDXMAIL_CONFIG": str(other)}) == explicit


def test_relay_password_from_environment(write_config: WriteConfig) -> None:
    """$JDXMAIL_RELAY_PASSWORD (single relay) and ..._<NAME> (named relays) supply the password."""
    write_config('{"RelayServer": {"Host": "smtp.example.com", "Username": "u"}}')
    relay = load_settings(environ={"JDXMAIL_RELAY_PASSWORD": "from-env"}).settings.relays[0]
    assert relay.password is not None
    assert relay.password.get_secret_value() == "from-env"
    write_config(
        '{"RelayServers": [{"Name": "main-gmail", "Host": "smtp.gmail.com"},'
        ' {"Name": "backup", "Host": "smtp.sendgrid.net", "Username": "apikey"}]}'
    )
    relays = load_settings(
        environ={"JDXMAIL_RELAY_PASSWORD_MAIN_GMAIL": "one", "JDXMAIL_RELAY_PASSWORD_BACKUP": "two"}
    ).settings.relays
    assert [r.password.get_secret_value() if r.password else None for r in relays] == ["one", "two"]


def test_secrets_never_show_in_repr_or_dumps(write_config: WriteConfig) -> None:
    """Passwords and hashes are masked in repr() and in JSON dumps of the settings."""
    write_config(GUIDE_JSON)
    settings = load_settings().settings
    for text in (repr(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert "5e884898da28" not in text
        assert "abcd efgh" not in text


def test_relative_paths_are_under_the_config_folder(tmp_path: Path) -> None:
    """Paths.Spool and TLS files given relative are resolved under the config file's folder."""
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "appsettings.json"
    path.write_text(
        '{"Paths": {"Spool": "q"}, "SmtpServer": {"Tls": {"CertFile": "c.pem", "KeyFile": "/k.pem"}}}'
    )
    settings = load_settings(path).settings
    assert settings.paths.spool == folder.resolve() / "q"
    assert settings.smtp_server.tls.cert_file == folder.resolve() / "c.pem"
    assert settings.smtp_server.tls.key_file == Path("/k.pem")


def test_unreadable_and_unparsable_files(tmp_path: Path, write_config: WriteConfig) -> None:
    """A missing file, a folder, bad UTF-8 and bad syntax raise errors with the position."""
    with pytest.raises(ConfigFileError, match="no such file"):
        load_settings(tmp_path / "missing.json")
    with pytest.raises(ConfigFileError, match="directory"):
        load_settings(tmp_path)
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{\n "a": "\xe9"}')
    with pytest.raises(ConfigParseError) as caught:
        load_settings(bad)
    assert (caught.value.line, caught.value.column) == (2, 8)
    with pytest.raises(ConfigParseError) as toml_error:
        load_settings(write_config("[SmtpServer]\nPort = = 1\n", name="x.toml"))
    assert toml_error.value.line == 2


def test_invalid_values_raise_with_findings(write_config: WriteConfig) -> None:
    """Wrong types and unknown keys raise ConfigInvalidError naming the key path."""
    write_config('{"SmtpServer": {"Port": "many", "Prot": 1}}')
    with pytest.raises(ConfigInvalidError) as caught:
        load_settings()
    keys = {f.key for f in caught.value.findings}
    assert keys == {"SmtpServer.Port", "SmtpServer.Prot"}


def test_relay_server_and_relay_servers_together_are_refused(write_config: WriteConfig) -> None:
    """Setting both RelayServer and RelayServers is an error, not a silent choice."""
    write_config('{"RelayServer": {"Host": "a"}, "RelayServers": [{"Host": "b"}]}')
    with pytest.raises(ConfigInvalidError, match="both RelayServer and RelayServers"):
        load_settings()


def test_trusted_networks_accept_addresses_and_host_bits(write_config: WriteConfig) -> None:
    """A single address is a /32 and host bits are cleared, so 192.168.1.5/24 means the LAN."""
    write_config('{"SmtpServer": {"TrustedNetworks": ["192.168.1.5/24", "10.1.2.3", "::1"]}}')
    networks = load_settings().settings.smtp_server.trusted_networks
    assert [str(n) for n in networks] == ["192.168.1.0/24", "10.1.2.3/32", "::1/128"]
