"""Every setting of both daemons is in the code and in the README, and vice versa."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from server.config import SETTINGS as SERVER_SETTINGS
from server.config import ServerConfig
from server.runtime.settings import Setting
from spoold.config import SETTINGS as SPOOLD_SETTINGS
from spoold.config import SpooldConfig

README = Path(__file__).resolve().parents[2] / "README.md"
DAEMONS = [
    pytest.param(SERVER_SETTINGS, ServerConfig, "TELEMETRY_", id="server"),
    pytest.param(SPOOLD_SETTINGS, SpooldConfig, "SPOOLD_", id="spoold"),
]


def documented(prefix: str) -> set[str]:
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \|", README.read_text(), flags=re.MULTILINE)
    return {name for name in rows if name.startswith(prefix)}


@pytest.mark.parametrize(("settings", "model", "prefix"), DAEMONS)
def test_every_config_field_has_an_environment_variable(
    settings: tuple[Setting, ...], model: type[BaseModel], prefix: str
) -> None:
    """No config field is unreachable from the environment, and no variable names a missing field."""
    assert {setting.field for setting in settings} == set(model.model_fields)
    assert all(setting.env.startswith(prefix) for setting in settings)


@pytest.mark.parametrize(("settings", "model", "prefix"), DAEMONS)
def test_readme_table_matches_the_code(
    settings: tuple[Setting, ...], model: type[BaseModel], prefix: str
) -> None:
    """The README's settings table lists exactly the variables the daemon reads."""
    assert documented(prefix) == {setting.env for setting in settings}
