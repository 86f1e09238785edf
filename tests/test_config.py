"""config.py: Settings.from_env names the bad variable and refuses an unusable DATA_DIR."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import Settings
from errors import ConfigError


@pytest.mark.parametrize("env, variable", [
    ({"MODE": "staging"}, "MODE"),
    ({"PREFIX": ""}, "PREFIX"),
    ({"PREFIX": " ! "}, "PREFIX"),
    ({"MODE": "prod"}, "DISCORD_TOKEN"),
    ({"AUDIO_WORKERS": "many"}, "AUDIO_WORKERS"),
    ({"MODEL_BACKEND": "gpt"}, "MODEL_BACKEND"),
    ({"DISCORD_API_BASE": "ftp://x"}, "DISCORD_API_BASE"),
    ({"PAID_CALLS_PER_USER_PER_DAY": "-1"}, "PAID_CALLS_PER_USER_PER_DAY"),
    ({"PAID_CALLS_PER_USER_PER_DAY": "lots"}, "PAID_CALLS_PER_USER_PER_DAY"),
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ({"SHARD_COUNT": "0"}, "SHARD_COUNT"),
    ({"SHARD_IDS": "0"}, "SHARD_IDS needs SHARD_COUNT"),
    ({"SHARD_COUNT": "2", "SHARD_IDS": "2"}, "SHARD_IDS"),
    ({"SHARD_COUNT": "2", "SHARD_IDS": "a,b"}, "SHARD_IDS"),
    ({"PICKS_TO_LEARN": "-1"}, "PICKS_TO_LEARN"),
    ({"OFFER_BUTTONS_MINUTES": "0"}, "OFFER_BUTTONS_MINUTES"),
])
def test_bad_configuration_names_the_variable(env: dict[str, str], variable: str, tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "d"), "CORRECTIONS_DIR": str(tmp_path / "c"), **env}
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(env)


def test_unusable_data_dir_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="DATA_DIR"):
        Settings.from_env({"DATA_DIR": str(blocker / "sub"), "CORRECTIONS_DIR": str(tmp_path / "c")})


def test_budget_settings(tmp_path: Path) -> None:
    dirs = {"DATA_DIR": str(tmp_path / "d"), "CORRECTIONS_DIR": str(tmp_path / "c")}
    default = Settings.from_env(dirs)
    assert (default.paid_calls_per_user_per_day, default.budget_exempt_role) == (200, None)
    custom = Settings.from_env({**dirs, "PAID_CALLS_PER_USER_PER_DAY": "0", "BUDGET_EXEMPT_ROLE": " Sponsors "})
    assert (custom.paid_calls_per_user_per_day, custom.budget_exempt_role) == (0, "Sponsors")


def test_offer_settings(tmp_path: Path) -> None:
    dirs = {"DATA_DIR": str(tmp_path / "d"), "CORRECTIONS_DIR": str(tmp_path / "c")}
    default = Settings.from_env(dirs)
    assert (default.offer_buttons_minutes, default.picks_to_learn) == (60.0, 2)
    custom = Settings.from_env({**dirs, "OFFER_BUTTONS_MINUTES": "5", "PICKS_TO_LEARN": "0"})
    assert (custom.offer_buttons_minutes, custom.picks_to_learn) == (5.0, 0)


def test_database_and_shard_settings(tmp_path: Path) -> None:
    dirs = {"DATA_DIR": str(tmp_path / "d"), "CORRECTIONS_DIR": str(tmp_path / "c")}
    default = Settings.from_env(dirs)
    assert (default.database_url, default.shard_count, default.shard_ids) == (None, None, None)
    url = "postgresql://bot:secret@db.internal/trainer"
    s = Settings.from_env({**dirs, "DATABASE_URL": url, "SHARD_COUNT": "4", "SHARD_IDS": "3, 2"})
    assert (s.database_url, s.shard_count, s.shard_ids) == (url, 4, (2, 3))
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**dirs, "DATABASE_URL": "mysql://bot:hunter2@db/trainer"})
    assert "hunter2" not in str(err.value)  # a refused URL is never echoed: it may hold a password


def test_an_unreachable_database_url_stops_the_bot_with_one_line(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import bot

    monkeypatch.setattr(bot, "load_settings", lambda: Settings.from_env({
        "DATA_DIR": str(tmp_path / "d"), "CORRECTIONS_DIR": str(tmp_path / "c"),
        # A socket folder where no server listens: refused at once, nothing leaves the machine.
        "DATABASE_URL": f"postgresql://bot:pw@/trainer?host={tmp_path}&port=5999"}))
    assert bot.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("configuration error: DATABASE_URL: I could not reach my database")
    assert "pw" not in err[-1]
