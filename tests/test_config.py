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
