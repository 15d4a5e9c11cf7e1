"""Config: defaults, validation errors that name the file, the key and the reason, state directory."""
import os
import stat

import pytest

from monitor import config
from monitor.config import ConfigError


def write(tmp_path, text, name="config.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_no_config_watches_status_openai_com(monkeypatch, tmp_path):
    monkeypatch.delenv("MONITOR_CONFIG", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    s = config.load(None)
    assert [(p.name, p.base_url, p.poll_interval, p.history_days) for p in s.pages] == [
        ("openai", "https://status.openai.com", 60, 365)]
    assert s.notifiers == ()
    assert s.database_url() == f"sqlite:///{tmp_path}/state/monitor.db"


def test_example_config_is_valid_and_documents_every_key(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    example = os.path.join(os.path.dirname(__file__), "..", "config.example.toml")
    s = config.load(example)
    assert s.pages[0].base_url == "https://status.openai.com"
    text = open(example).read()
    for model in (config.PageSettings, config.NotifierSettings, config.NotifySettings, config.DatabaseSettings):
        for key in model.model_fields:
            assert f"{key} =" in text or f"# {key} =" in text, key


def test_absolute_and_other_database_urls_are_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    assert config.resolve_database_url("sqlite:////var/x.db") == "sqlite:////var/x.db"
    assert config.resolve_database_url("postgresql://u:p@h/db") == "postgresql://u:p@h/db"


@pytest.mark.parametrize("text, expected", [
    ("[[pages]]\nname='a'\nbase_url='https://x.example'\npoll_interval='fast'\n",
     "pages[0].poll_interval: Input should be a valid number"),
    ("[[pages]]\nname='a'\nbase_url='ftp://x.example'\n", "pages[0].base_url: must be an http(s) URL"),
    ("[[pages]]\nname='a'\nbase_url='https://x.example'\ncolour='red'\n", "pages[0].colour: unknown key"),
    ("[databse]\nurl='sqlite:///x.db'\n", "databse: unknown key"),
    ("[[notifiers]]\nname='n'\n", "notifiers[0]: set exactly one of url or url_env"),
    ("[[notifiers]]\nname='n'\nurl='json://127.0.0.1'\nmin_impact='huge'\n", "notifiers[0].min_impact: Input should be"),
    ("[tags.file-upload]\npatterns=['(unclosed']\n", "tags.file-upload.patterns[0]: invalid regex"),
    ("[[pages]]\nname='a'\nbase_url='https://x'\n[[pages]]\nname='a'\nbase_url='https://y'\n", "pages: page names must be unique"),
    ("this is = = not toml", "not valid TOML"),
])
def test_bad_config_names_file_key_and_reason(tmp_path, text, expected):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        config.load(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: ")
    assert expected in msg
    assert "\n" not in msg


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.toml: cannot read: No such file"):
        config.load(tmp_path / "nope.toml")


def test_world_readable_config_with_secret_url_warns(tmp_path):
    p = write(tmp_path, "[[notifiers]]\nname='slack'\nurl='slack://T0/B0/XyZ123token'\n")
    os.chmod(p, 0o644)
    warnings = []
    config.load(p, warn=warnings.append)
    assert len(warnings) == 1 and "readable by other users" in warnings[0] and "XyZ123token" not in warnings[0]
    os.chmod(p, 0o600)
    warnings.clear()
    config.load(p, warn=warnings.append)
    assert warnings == []


def test_url_env_keeps_secret_out_of_file(tmp_path, monkeypatch):
    p = write(tmp_path, "[[notifiers]]\nname='slack'\nurl_env='MY_SLACK'\n")
    os.chmod(p, 0o644)
    warnings = []
    s = config.load(p, warn=warnings.append)
    assert warnings == []
    with pytest.raises(ConfigError, match="MY_SLACK is not set"):
        s.notifiers[0].resolved_url()
    monkeypatch.setenv("MY_SLACK", "slack://T/B/C")
    assert s.notifiers[0].resolved_url() == "slack://T/B/C"


def test_notifier_filters():
    n = config.NotifierSettings(name="n", url="json://x", events=("opened", "resolved"), min_impact="major")
    assert n.wants({"file-upload"}, "opened", "critical")
    assert not n.wants({"file-upload"}, "updated", "critical")
    assert not n.wants({"file-upload"}, "opened", "minor")
    assert not n.wants({"other"}, "opened", "critical")
    assert config.NotifierSettings(name="n", url="json://x", tags=("*",)).wants(set(), "opened", "none")


def test_settings_are_frozen():
    from pydantic import ValidationError

    s = config.Settings()
    with pytest.raises(ValidationError, match="frozen_instance"):
        s.pages[0].poll_interval = 1
    with pytest.raises(ValidationError, match="frozen_instance"):
        s.database = config.DatabaseSettings(url="sqlite:///other.db")
    assert s.pages[0].poll_interval == 60 and s.database.url == "sqlite:///monitor.db"
