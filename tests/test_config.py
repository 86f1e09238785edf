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
