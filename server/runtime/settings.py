"""Loading a frozen pydantic config from environment variables, shared by both daemons.

Each daemon declares its settings once (env name, field, meaning); the same
table drives loading, error messages that name the variable, and the README.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A setting has a bad value; the message names the variable."""


@dataclass(frozen=True)
class Setting:
    env: str
    field: str
    help: str


C = TypeVar("C", bound=BaseModel)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_UPPER_CASE_FIELDS = {"journal_mode", "synchronous", "log_level"}


def load(
    model: type[C],
    settings: Sequence[Setting],
    env: Mapping[str, str],
    overrides: Mapping[str, Any],
) -> C:
    """Build model from env (by the settings table), then non-None overrides (flags)."""
    values: dict[str, Any] = {}
    for setting in settings:
        raw = env.get(setting.env)
        if raw is not None:
            values[setting.field] = _coerce(model, setting, raw)
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, settings)) from exc


def unset_if_empty(value: Any) -> Any:
    """An optional path given as an empty (or blank) variable means "not set", not "."."""
    return None if isinstance(value, str) and not value.strip() else value


def require_pair(first: Any, second: Any, first_env: str, second_env: str) -> None:
    """Two settings that only make sense together: both or neither."""
    if (first is None) != (second is None):
        given, missing = (first_env, second_env) if second is None else (second_env, first_env)
        raise ValueError(f"{given} is set but {missing} is not: set both, or neither")


def _coerce(model: type[BaseModel], setting: Setting, raw: str) -> Any:
    annotation = model.model_fields[setting.field].annotation
    if annotation is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{setting.env}={raw!r}: expected true or false")
    if setting.field in _UPPER_CASE_FIELDS:
        return raw.strip().upper()
    return raw.strip()


def _describe(exc: ValidationError, settings: Sequence[Setting]) -> str:
    by_field = {setting.field: setting.env for setting in settings}
    messages = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        # A check across fields (loc empty) names its variables in the message itself.
        messages.append(f"{by_field.get(field, field)}: {message}" if field else message)
    return "; ".join(messages)


def require_inflight_fits_a_body(prefix: str, max_inflight_bytes: int, max_body_bytes: int) -> None:
    """Admission must be able to admit one largest body, or such a request waits forever."""
    if max_inflight_bytes < max_body_bytes:
        raise ValueError(
            f"{prefix}_MAX_INFLIGHT_BYTES must be at least {prefix}_MAX_BODY_BYTES"
            " (a largest body must fit)"
        )
