"""Settings: defaults, TOML, environment, and start-up errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from conf import SettingsError, load, load_resolved, to_env


def test_defaults() -> None:
    settings = load(env={})
    assert settings.vod.target_duration == 6.0
    assert settings.vod.segment_format == "fmp4"
    assert settings.storage.library == "./data"
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)


def test_toml_then_env_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "clipsync.toml"
    config.write_text('[vod]\ntarget_duration = 4\nsegment_format = "ts"\n[server]\nport = 9000\n')
    env = {"CLIPSYNC_CONFIG": str(config), "CLIPSYNC_SERVER__PORT": "9100"}
    settings = load(env=env, overrides={"storage": {"library": "/srv"}})
    assert settings.vod.target_duration == 4.0
    assert settings.vod.segment_format == "ts"
    assert settings.server.port == 9100
    assert settings.storage.library == "/srv"


def test_tables_come_from_the_environment_as_json() -> None:
    env = {"CLIPSYNC_AUTH__JWT_VERIFY_KEYS": '{"k0": "/keys/k0.pem", "k1": "s3cret"}'}
    assert load(env=env).auth.jwt_verify_keys == {"k0": "/keys/k0.pem", "k1": "s3cret"}
    assert "s3cret" not in repr(load(env=env).auth)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CLIPSYNC_VOD__TARGET_DURATION": "0.2"}, "vod.target_duration"),
        ({"CLIPSYNC_VOD__TARGET_DURATION": "six"}, "vod.target_duration"),
        ({"CLIPSYNC_VOD__SEGMENT_FORMAT": "webm"}, "vod.segment_format"),
        ({"CLIPSYNC_SERVER__PORT": "70000"}, "server.port"),
        ({"CLIPSYNC_VOD__MAX_OVERRUN": "2"}, "vod.max_overrun"),
        ({"CLIPSYNC_VOD__TARGET_DURATIN": "4"}, "vod.target_duratin"),
        ({"CLIPSYNC_NOPE": "1"}, "CLIPSYNC_NOPE"),
        ({"CLIPSYNC_AUTH__JWT_VERIFY_KEYS": "k0=secret"}, "auth.jwt_verify_keys"),
        ({"CLIPSYNC_AUTH__JWT_VERIFY_KEYS": '{"k0": 5}'}, "auth.jwt_verify_keys"),
    ],
)
def test_invalid_environment_names_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load(env=env)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[vod]\ntarget_duration = -1\n", "vod.target_duration"),
        ('[server]\nport = "x"\n', "server.port"),
        ("[vod]\nunknown_key = 1\n", "unknown_key"),
        ("[vod\n", "not valid TOML"),
    ],
)
def test_invalid_file_names_the_setting(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load(config, env={})


def test_missing_config_file() -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load("/nonexistent/clipsync.toml", env={})


def test_resolved_settings_round_trip() -> None:
    settings = load(env={"CLIPSYNC_VOD__TARGET_DURATION": "4", "CLIPSYNC_SERVER__WORKERS": "3"})
    assert load_resolved(to_env(settings)) == settings
