"""Configuration loading: defaults, the example file, bounds, typos, environment, secrets, key files."""

from __future__ import annotations

import base64
import os
import stat
import typing
from dataclasses import fields
from pathlib import Path

import pytest

from idtronic_tel.config import ConfigError, load_config, prepare_data_dir
from idtronic_tel.config_schema import Config, SmppBindConfig
from idtronic_tel.config_sources import SECTIONS

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "idtronic.toml"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory whose ./idtronic-data holds freshly generated keys."""
    monkeypatch.chdir(tmp_path)
    prepare_data_dir(Path("idtronic-data"))
    return tmp_path


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def load(toml: str = "", **environ: str) -> Config:
    path = Path("test.toml")
    path.write_text(toml)
    return load_config(path, None, environ)


def error(toml: str = "", **environ: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(toml, **environ)
    return str(info.value)


# --- Defaults and the example ---------------------------------------------------------------------


def test_defaults_without_a_file(workdir: Path) -> None:
    config = load_config(None, None, {})
    data = workdir / "idtronic-data"
    assert config.data_dir == data
    assert config.database.url == f"sqlite:///{data}/idtronic.db"
    assert config.api.operator_key == (data / "operator.key").read_text().strip()
    assert config.api.operator_key.startswith("idt_op_") and len(config.api.operator_key) == 7 + 43
    assert config.keys.data_key == base64.b64decode((data / "data.key").read_text())
    assert len(config.keys.data_key) == len(config.keys.hmac_key) == 32
    assert config.tokens.lifetime == 300.0 and config.smpp.binds == () and config.ami.secret == ""


def test_example_file_loads_with_the_defaults(workdir: Path) -> None:
    config = load_config(EXAMPLE, None, {})
    defaults = load_config(None, None, {})
    assert config == defaults


def test_example_bind_block_loads_when_uncommented(workdir: Path) -> None:
    text = EXAMPLE.read_text()
    start, end = text.index("# [[smpp.bind]]"), text.index("# --- Demonstration")
    block = "\n".join(line.removeprefix("# ") for line in text[start:end].splitlines())
    path = write(workdir / "bind.toml", text[:start] + block + "\n" + text[end:])
    secret = write(workdir / "smpp.password", "s3cret\n")
    config = load_config(path, None, {"IDTRONIC_SMPP_BIND_1_PASSWORD_FILE": str(secret)})
    (bind,) = config.smpp.binds
    assert (bind.name, bind.password, bind.window, bind.max_tps) == ("smsc1", "s3cret", 10, 100.0)


def test_data_dir_and_config_from_the_environment(workdir: Path) -> None:
    other = workdir / "other"
    prepare_data_dir(other)
    write(workdir / "env.toml", "[tokens]\nlifetime = 120\n")
    config = load_config(None, None, {"IDTRONIC_DATA_DIR": str(other), "IDTRONIC_CONFIG": "env.toml"})
    assert config.data_dir == other and config.tokens.lifetime == 120.0
    assert config.database.url == f"sqlite:///{other}/idtronic.db"


def test_relative_sqlite_path_is_made_absolute(workdir: Path) -> None:
    config = load('[database]\nurl = "sqlite:///db/x.db"\n')
    assert config.database.url == f"sqlite:///{workdir}/db/x.db"
    assert load('[database]\nurl = "postgresql://u@h/db"\n').database.url == "postgresql://u@h/db"


def test_missing_configuration_file(workdir: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: not found"):
        load_config(Path("nope.toml"), None, {})


def test_invalid_toml(workdir: Path) -> None:
    assert "invalid TOML" in error("[http\n")


# --- Bounds and values ----------------------------------------------------------------------------

BAD_VALUES = [
    ("tokens", "lifetime", "59", "between 60 and 600 seconds"),
    ("tokens", "lifetime", "601", "between 60 and 600 seconds"),
    ("tokens", "lifetime", "nan", "between 60 and 600 seconds"),
    ("tokens", "max_attempts", "0", "between 1 and 10"),
    ("tokens", "max_attempts", "11", "between 1 and 10"),
    ("tokens", "max_resends", "-1", "between 0 and 10"),
    ("tokens", "max_resends", "11", "between 0 and 10"),
    ("tokens", "resend_interval", "9", "between 10 and 600 seconds"),
    ("tokens", "resend_interval", "601", "between 10 and 600 seconds"),
    ("budget", "max_consecutive_failures", "2", "between 3 and 5"),
    ("budget", "max_consecutive_failures", "6", "between 3 and 5"),
    ("profile", "session_idle", "59", "between 60 and 300 seconds"),
    ("profile", "session_idle", "301", "between 60 and 300 seconds"),
    ("callback", "max_calls", "0", "between 1 and 10"),
    ("callback", "max_calls", "11", "between 1 and 10"),
    ("callback", "retry_interval", "59", "between 60 and 3600 seconds"),
    ("callback", "retry_interval", "3601", "between 60 and 3600 seconds"),
    ("callback", "first_call_delay", "-1", "between 0 and 3600 seconds"),
    ("callback", "first_call_delay", "3601", "between 0 and 3600 seconds"),
    ("callback", "max_entries", "0", "between 1 and 5"),
    ("callback", "max_entries", "6", "between 1 and 5"),
    ("callback", "dtmf_timeout", "2", "between 3 and 30 seconds"),
    ("callback", "dtmf_timeout", "31", "between 3 and 30 seconds"),
    ("callback", "calling_hours", '"21:00-08:00"', "HH:MM-HH:MM"),
    ("callback", "calling_hours", '"8:00-21:00"', "HH:MM-HH:MM"),
    ("callback", "calling_hours", '"08:00-24:30"', "HH:MM-HH:MM"),
    ("callback", "timezone", '"Europe/Pariss"', "time zone"),
    ("enrollment", "card_prefixes", '["4", "51-5"]', "equal length"),
    ("enrollment", "card_prefixes", '["55-51"]', "low first"),
    ("enrollment", "card_prefixes", '["123456789"]', "1 to 8 digits"),
    ("enrollment", "card_prefixes", '["4x"]', "1 to 8 digits"),
    ("enrollment", "card_prefixes", "[]", "at least one"),
    ("enrollment", "default_region", '"XX"', "region code"),
    ("enrollment", "default_region", '"FRA"', "region code"),
    ("ami", "auth", '"sha"', '"md5", "plain"'),
    ("ami", "callback_channel", '"PJSIP/0611223344@trunk"', "{e164}, {digits}, {national}"),
    ("ami", "callback_channel", '"PJSIP/{national}@{trunk}"', "unknown placeholder {trunk"),
    ("ami", "callback_channel", '"{national}"', "dial string"),
    ("ami", "caller_id", '"x\\r\\nAction: Logoff"', "line breaks"),
    ("tokens", "payment_template", '"code {amount}"', "must contain {code}"),
    ("tokens", "payment_template", '"{code} {iban}"', "unknown placeholder {iban"),
    ("tokens", "payment_template", '"{code:>8}"', "unknown placeholder {code"),
    ("tokens", "payment_template", '"{code"', "not a valid template"),
    ("tokens", "profile_template", '"{code} {amount}"', "unknown placeholder {amount"),
    ("tokens", "profile_template", '"open {minutes}"', "must contain {code}"),
    ("demo", "handset_last8", '"1234"', "8 digits"),
    ("agi", "language", '"French"', "language code"),
    ("smpp", "worker", '"web1:8080"', "not ending in :<digits>"),
    ("smpp", "worker", '"web 1"', "not ending in :<digits>"),
    ("smpp", "worker", '"' + "w" * 101 + '"', "1 to 100"),
]


@pytest.mark.parametrize(("section", "key", "value", "problem"), BAD_VALUES)
def test_values_out_of_bounds_are_refused(
    workdir: Path, section: str, key: str, value: str, problem: str
) -> None:
    message = error(f"[{section}]\n{key} = {value}\n")
    assert message.startswith(f"{section}.{key} = ")
    assert problem in message


def test_bound_message_format(workdir: Path) -> None:
    assert error("[tokens]\nlifetime = 30\n").startswith(
        "tokens.lifetime = 30: must be between 60 and 600 seconds"
    )


GOOD_VALUES = [
    ("tokens", "lifetime", "60"),
    ("tokens", "lifetime", "600.0"),
    ("tokens", "max_resends", "0"),
    ("budget", "max_consecutive_failures", "3"),
    ("callback", "calling_hours", '"00:00-24:00"'),
    ("callback", "first_call_delay", "0"),
    ("enrollment", "card_prefixes", '["4", "2221-2720", "60110000-60119999"]'),
    ("enrollment", "default_region", '"BE"'),
    ("ami", "callback_channel", '"Local/{e164}@out"'),
    ("ami", "auth", '"plain"'),
    ("tokens", "payment_template", '"{code}"'),
    ("tokens", "profile_template", '"{{x}} {code} {minutes}"'),
    ("smpp", "worker", '"web1:a"'),
    ("smpp", "worker", '"sms-1@dc2"'),
]


def test_every_number_has_bounds() -> None:
    numeric = [
        (cls, f)
        for cls in (*SECTIONS.values(), SmppBindConfig)
        for f in fields(cls)
        if typing.get_type_hints(cls)[f.name] in (int, float)
    ]
    assert numeric and [f"{cls.__name__}.{f.name}" for cls, f in numeric if not f.metadata.get("check")] == []


@pytest.mark.parametrize(("section", "key", "value"), GOOD_VALUES)
def test_values_inside_bounds_are_accepted(workdir: Path, section: str, key: str, value: str) -> None:
    load(f"[{section}]\n{key} = {value}\n")


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("window", "0", "between 1 and 1000"),
        ("window", "1001", "between 1 and 1000"),
        ("max_tps", "0", "greater than 0 and at most 10000"),
        ("max_tps", "10001", "greater than 0 and at most 10000"),
        ("mode", '"receiver"', '"transceiver", "transmitter_receiver"'),
        ("source_ton", "7", "between 0 and 6"),
        ("source_npi", "19", "between 0 and 18"),
        ("dest_ton", "-1", "between 0 and 6"),
        ("dest_npi", "19", "between 0 and 18"),
        ("source_addr", '"IDTRONIC-LONG"', "1 to 11 characters"),
        ("system_id", '"a-very-long-system-id"', "1 to 15"),
        ("endpoint", '"tcp:smsc"', "client endpoint"),
    ],
)
def test_bind_values_are_checked(workdir: Path, key: str, value: str, problem: str) -> None:
    message = error(f"[[smpp.bind]]\n[[smpp.bind]]\n{key} = {value}\n")
    assert message.startswith(f"smpp.bind[2].{key} = ")
    assert problem in message


def test_numeric_source_addr_needs_digits(workdir: Path) -> None:
    assert "1 to 20 digits" in error('[[smpp.bind]]\nsource_ton = 1\nsource_addr = "IDTRONIC"\n')
    assert load('[[smpp.bind]]\nsource_ton = 1\nsource_addr = "33612345678"\n').smpp.binds[0].source_ton == 1


def test_bind_names_are_unique(workdir: Path) -> None:
    assert "already used by smpp.bind[1]" in error('[[smpp.bind]]\n[[smpp.bind]]\nname = "smsc1"\n')
    names = [b.name for b in load("[[smpp.bind]]\n[[smpp.bind]]\n").smpp.binds]
    assert names == ["smsc1", "smsc2"]


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ('[tokens]\nlifetime = "300"\n', 'tokens.lifetime = "300": must be a number'),
        ("[tokens]\nmax_attempts = 3.0\n", "tokens.max_attempts = 3: must be an integer"),
        ("[tokens]\nmax_attempts = true\n", "must be an integer"),
        ("[http]\ntrust_forwarded_for = 1\n", "must be true or false"),
        ('[enrollment]\ncard_prefixes = "4"\n', "must be a list of strings"),
        ("[http]\nlisten = 8080\n", "must be a string"),
        ("[smpp.bind]\nwindow = 1\n", "[[smpp.bind]]"),
        ("[smpp]\nbind = 3\n", "[[smpp.bind]]"),
    ],
)
def test_types_are_checked(workdir: Path, toml: str, problem: str) -> None:
    assert problem in error(toml)


def test_cross_checks(workdir: Path) -> None:
    assert "longer than callback.dtmf_timeout" in error("[agi]\ncommand_timeout = 10\n")
    assert "longer than smpp.enquire_link_interval" in error("[smpp]\nlink_dead_timeout = 30\n")
    assert "must be set when ami.secret is" in error('[ami]\nusername = ""\nsecret = "x"\n')
    too_short = "[budget]\nlock_duration = 7200\nmax_lock_duration = 3600\n"
    assert "at least budget.lock_duration" in error(too_short)


def test_database_url(workdir: Path) -> None:
    assert "backend mysql not supported" in error('[database]\nurl = "mysql://u:pw@h/db"\n')
    assert "pw" not in error('[database]\nurl = "mysql://u:pw@h/db"\n')
    assert "not a database URL" in error('[database]\nurl = "not a url"\n')


# --- Endpoints ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ('[http]\nlisten = "tcp:abc"\n', 'http.listen = "tcp:abc": is not a valid Twisted server endpoint'),
        ('[http]\nlisten = "bogus:80"\n', "Unknown endpoint type"),
        ('[http]\nlisten = "tcp:80:color=red"\n', "server endpoint"),
        ('[http]\nlisten = "tcp:70000"\n', "port 70000 must be between 0 and 65535"),
        ('[http]\nlisten = "ssl:8443:privateKey=nope.pem"\n', "nope.pem not found"),
        ('[agi]\nlisten = ""\n', "agi.listen"),
        ('[ami]\nendpoint = "tcp:127.0.0.1"\n', "ami.endpoint"),
        ('[ami]\nendpoint = "tcp:127.0.0.1:0"\n', "port 0 must be between 1 and 65535"),
        ('[demo]\nsmsc_listen = "tcp"\n', "demo.smsc_listen"),
    ],
)
def test_endpoint_strings_are_checked(workdir: Path, toml: str, problem: str) -> None:
    assert problem in error(toml)


def test_valid_endpoint_strings_do_not_listen(workdir: Path) -> None:
    config = load(
        '[http]\nlisten = "unix:/tmp/idtronic-test.sock"\n'
        '[agi]\nlisten = "tcp:0:interface=\\\\:\\\\:1"\n'
        '[ami]\nendpoint = "tls:asterisk.example.net:5039"\n'
        '[[smpp.bind]]\nendpoint = "tcp:host=smsc.example.net:port=2775"\n'
    )
    assert config.ami.endpoint.startswith("tls:")
    assert not Path("/tmp/idtronic-test.sock").exists()


# --- Typos ----------------------------------------------------------------------------------------


def test_unknown_section_with_suggestion(workdir: Path) -> None:
    assert error("[token]\nlifetime = 300\n").startswith("[token]: unknown section (did you mean tokens?)")


def test_unknown_key_with_suggestion(workdir: Path) -> None:
    assert error("[tokens]\nlifetme = 300\n") == "tokens.lifetme: unknown key (did you mean lifetime?)"
    assert "smpp.bind[1].windw: unknown key (did you mean window?)" in error("[[smpp.bind]]\nwindw = 1\n")
    assert "unknown key" in error('listen = "tcp:80"\n')


def test_unknown_environment_variable_with_suggestion(workdir: Path) -> None:
    message = error(IDTRONIC_TOKENS_LIFETME="300")
    assert (
        message
        == "IDTRONIC_TOKENS_LIFETME: not a configuration setting (did you mean IDTRONIC_TOKENS_LIFETIME?)"
    )
    assert "IDTRONIC_SMPP_BIND_1_WINDOW" in error(IDTRONIC_SMPP_BIND_1_WINDW="3")


# --- Environment overrides ------------------------------------------------------------------------


def test_environment_overrides_the_file(workdir: Path) -> None:
    config = load(
        "[tokens]\nlifetime = 120\n",
        IDTRONIC_TOKENS_LIFETIME="240",
        IDTRONIC_HTTP_LISTEN="tcp:9090",
        IDTRONIC_HTTP_TRUST_FORWARDED_FOR="yes",
        IDTRONIC_ENROLLMENT_CARD_PREFIXES="4, 51-55",
        IDTRONIC_VOICE_FALLBACK_ENABLED="1",
        IDTRONIC_TOKENS_MAX_ATTEMPTS="5",
        IDTRONIC_DATABASE_URL="postgresql://idtronic@db/idtronic",
    )
    assert config.tokens.lifetime == 240.0 and config.tokens.max_attempts == 5
    assert config.http.listen == "tcp:9090" and config.http.trust_forwarded_for is True
    assert config.enrollment.card_prefixes == ("4", "51-55")
    assert config.voice_fallback.enabled is True
    assert config.database.url == "postgresql://idtronic@db/idtronic"


def test_environment_values_are_parsed_and_checked(workdir: Path) -> None:
    assert error(IDTRONIC_TOKENS_LIFETIME="30").startswith(
        "tokens.lifetime = 30 (from IDTRONIC_TOKENS_LIFETIME): must be between 60 and 600 seconds"
    )
    assert "must be an integer" in error(IDTRONIC_TOKENS_MAX_ATTEMPTS="three")
    assert "true, false, 1, 0, yes, no" in error(IDTRONIC_DEMO_ENABLED="maybe")


def test_environment_binds(workdir: Path) -> None:
    config = load(
        '[[smpp.bind]]\nsystem_id = "a"\n',
        IDTRONIC_SMPP_BIND_1_WINDOW="20",
        IDTRONIC_SMPP_BIND_2_ENDPOINT="tcp:10.0.0.2:2775",
        IDTRONIC_SMPP_BIND_2_PASSWORD="pw2",
    )
    first, second = config.smpp.binds
    assert (first.system_id, first.window) == ("a", 20)
    assert (second.name, second.endpoint, second.password) == ("smsc2", "tcp:10.0.0.2:2775", "pw2")


def test_environment_binds_without_gaps(workdir: Path) -> None:
    assert "there is no bind 1" in error(IDTRONIC_SMPP_BIND_2_WINDOW="3")
    assert "numbered from 1" in error(IDTRONIC_SMPP_BIND_0_WINDOW="3")
    assert len(load(**{f"IDTRONIC_SMPP_BIND_{n}_WINDOW": "3" for n in range(1, 12)}).smpp.binds) == 11


def test_environment_secret_replaces_the_files_secret_file(workdir: Path) -> None:
    config = load('[ami]\nsecret_file = "/nonexistent/ami.secret"\n', IDTRONIC_AMI_SECRET="from-env")
    assert config.ami.secret == "from-env"
    secret = write(workdir / "ami.secret", "from-file\n")
    config = load('[ami]\nsecret = "inline"\n', IDTRONIC_AMI_SECRET_FILE=str(secret))
    assert config.ami.secret == "from-file"


# --- Secrets from files ---------------------------------------------------------------------------


def test_secret_files(workdir: Path) -> None:
    write(workdir / "ami.secret", "ami-pw\n", 0o640)  # group-readable is fine for a secret file
    write(workdir / "op.key", "operator-key-0123456789\n")
    config = load('[ami]\nsecret_file = "ami.secret"\n[api]\noperator_key_file = "op.key"\n')
    assert (config.ami.secret, config.api.operator_key) == ("ami-pw", "operator-key-0123456789")


@pytest.mark.parametrize(
    ("toml", "environ", "problem"),
    [
        ('[ami]\nsecret = "a"\nsecret_file = "x"\n', {}, "ami.secret and ami.secret_file are both set"),
        (
            '[api]\noperator_key = "a"\noperator_key_file = "x"\n',
            {},
            "api.operator_key and api.operator_key_file",
        ),
        ('[[smpp.bind]]\npassword = "a"\npassword_file = "x"\n', {}, "smpp.bind[1].password and"),
        ("", {"IDTRONIC_AMI_SECRET": "a", "IDTRONIC_AMI_SECRET_FILE": "x"}, "both set"),
        ('[ami]\nsecret_file = "missing.secret"\n', {}, 'ami.secret_file = "missing.secret": file not found'),
        (
            '[[smpp.bind]]\npassword_file = "nope"\n',
            {},
            'smpp.bind[1].password_file = "nope": file not found',
        ),
    ],
)
def test_secret_file_errors(workdir: Path, toml: str, environ: dict[str, str], problem: str) -> None:
    assert problem in error(toml, **environ)


def test_secret_values_never_appear_in_messages(workdir: Path) -> None:
    message = error('[api]\noperator_key = "short-secret"\n')
    assert message.startswith("api.operator_key = (hidden): must be at least 16 characters")
    assert "short-secret" not in message


def test_world_readable_secret_file_is_refused(workdir: Path) -> None:
    write(workdir / "ami.secret", "pw\n", 0o644)
    assert "chmod 600" in error('[ami]\nsecret_file = "ami.secret"\n')


def test_empty_secret_file_is_refused(workdir: Path) -> None:
    write(workdir / "ami.secret", "\n")
    assert "the file is empty" in error('[ami]\nsecret_file = "ami.secret"\n')


# --- Key files ------------------------------------------------------------------------------------


def test_prepare_creates_private_files_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    prepare_data_dir(data)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    contents = {}
    for name in ("operator.key", "data.key", "hmac.key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600
        contents[name] = (data / name).read_bytes()
    assert len(base64.b64decode(contents["data.key"])) == 32 and contents["data.key"] != contents["hmac.key"]
    prepare_data_dir(data)
    assert all((data / name).read_bytes() == content for name, content in contents.items())


def test_prepare_does_not_generate_keys_given_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "c.toml", '[keys]\ndata_key_file = "/etc/data.key"\nhmac_key_file = "data/hmac.key"\n')
    prepare_data_dir(Path("data"), Path("c.toml"), {"IDTRONIC_API_OPERATOR_KEY": "x" * 20})
    assert sorted(os.listdir("data")) == ["hmac.key"]  # hmac_key_file names the default place


def test_group_readable_key_file_is_refused(workdir: Path) -> None:
    key = workdir / "idtronic-data" / "data.key"
    key.chmod(0o640)
    message = error()
    assert f'keys.data_key_file = "{key}"' in message
    assert f"chmod 600 {key}" in message and "0640" in message


@pytest.mark.parametrize(
    "content",
    [b"c2hvcnQ=\n", b"not base64 at all!\n", b"00" * 31 + b"\n", base64.b64encode(bytes(33)) + b"\n"],
)
def test_key_file_must_hold_32_bytes(workdir: Path, content: bytes) -> None:
    key = workdir / "k.key"
    key.write_bytes(content)
    key.chmod(0o600)
    assert "must hold 32 random bytes" in error(f'[keys]\ndata_key_file = "{key}"\n')


def test_key_file_in_hex(workdir: Path) -> None:
    write(workdir / "k.key", "ab" * 32 + "\n")
    assert load('[keys]\ndata_key_file = "k.key"\n').keys.data_key == bytes([0xAB]) * 32


def test_data_and_hmac_keys_must_differ(workdir: Path) -> None:
    assert "use two different keys" in error('[keys]\nhmac_key_file = "idtronic-data/data.key"\n')


def test_missing_key_files_name_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"api\.operator_key_file = .*operator\.key\": file not found"):
        load_config(None, tmp_path / "empty", {})
