"""Configuration layers, secret references and startup errors."""

from __future__ import annotations

import pytest

from cortex.app import create_app
from cortex.config import ConfigError, Secret, load_config, redacted


def test_layers_defaults_file_environment_overrides(tmp_path):
    config_file = tmp_path / "cortex.toml"
    config_file.write_text('[server]\nworkers = 3\nbind = "0.0.0.0:9000"\n[queue]\ndurability = "fsync"\n')
    environ = {"CORTEX_SERVER__WORKERS": "5", "CORTEX_INGEST__STRICT": "true"}
    config = load_config(config_file, overrides={"ingest": {"max_events_per_bundle": 50}}, environ=environ)
    assert config["server"]["bind"] == "0.0.0.0:9000"          # file over default
    assert config["server"]["workers"] == 5                     # environment over file
    assert config["ingest"]["strict"] is True                   # parsed as TOML
    assert config["ingest"]["max_events_per_bundle"] == 50      # overrides last
    assert config["queue"]["durability"] == "fsync"
    assert config["server"]["threads"] == 1                     # default kept


def test_config_file_from_environment(tmp_path):
    config_file = tmp_path / "c.toml"
    config_file.write_text(f'data_dir = "{tmp_path / "d"}"\n')
    config = load_config(environ={"CORTEX_CONFIG": str(config_file)})
    assert config["data_dir"] == str(tmp_path / "d")
    assert config["control_db"] == f"sqlite:///{tmp_path / 'd' / 'control.db'}"


def test_secrets_by_reference_are_never_printed(tmp_path):
    secret_file = tmp_path / "pw"
    secret_file.write_text("file-secret\n")
    overrides = {"sinks": {"sql": {"type": "sql", "url": {"env": "MY_DB_URL"}, "password": {"file": str(secret_file)}}}}
    config = load_config(overrides=overrides, environ={"MY_DB_URL": "postgresql://u:hunter2@db/x"})
    url = config["sinks"]["sql"]["url"]
    assert isinstance(url, Secret) and url.reveal() == "postgresql://u:hunter2@db/x"
    assert config["sinks"]["sql"]["password"].reveal() == "file-secret"
    shown = repr(redacted(config))
    assert "hunter2" not in shown and "file-secret" not in shown and "MY_DB_URL" in shown


@pytest.mark.parametrize(
    "overrides, environ, message",
    [
        ({"sinks": {"x": {"type": "sql", "url": {"env": "NOPE"}}}}, {}, "NOPE, which is not set"),
        ({"sinks": {"x": {"type": "sql", "url": {"file": "/nonexistent/pw"}}}}, {}, "/nonexistent/pw"),
        ({"queue": {"durability": "maybe"}}, {}, 'queue.durability must be "os" or "fsync"'),
        ({"sinks": {"x": {"path": "/tmp"}}}, {}, "[sinks.x] needs a type"),
        ({"server": {"workers": 0}}, {}, "server.workers must be a number of at least 1"),
        ({}, {"CORTEX_INGEST__MAX_BODY_BYTES": "lots"}, "ingest.max_body_bytes"),
    ],
)
def test_unusable_configuration_says_what_is_wrong(overrides, environ, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=overrides, environ=environ)
    assert message in str(error.value)


def test_bad_toml_names_the_file(tmp_path):
    config_file = tmp_path / "broken.toml"
    config_file.write_text("[server\n")
    with pytest.raises(ConfigError, match="broken.toml is not valid TOML"):
        load_config(config_file, environ={})


def test_unknown_sink_type_is_a_startup_error_naming_the_package(tmp_path):
    with pytest.raises(ConfigError) as error:
        create_app(overrides={"data_dir": str(tmp_path), "sinks": {"lake": {"type": "parquet"}}})
    message = str(error.value)
    assert '[sinks.lake] has type = "parquet"' in message
    assert "registered: file, http, kafka, sql" in message and "install the plugin package" in message
