"""Where the operator commands find the spool: the directory the installed daemon uses.

The daemon takes its spool directory from ``SPOOLD_SPOOL_DIR`` (the environment,
or the env file its unit reads) or else from systemd's ``StateDirectory=`` —
``/var/lib/spoold``, which under ``DynamicUser=yes`` is a link to
``/var/lib/private/spoold``. The operator commands look in the same places, in
this order (the daemon's own): ``--spool-dir``, ``SPOOLD_SPOOL_DIR``, the env
file (``--env-file``, default the one ``deploy/install.sh`` installs),
``STATE_DIRECTORY``, the unit's state directory. The first place that names a directory decides; it must
hold a spool, or the command stops: it never creates an empty spool (such as
``./spool``) and reports a misleading "nothing there".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The env file the unit reads (``EnvironmentFile=`` in systemd/spoold.service).
DEFAULT_ENV_FILE = Path("/etc/local-telemetry/spoold.env")
#: ``StateDirectory=spoold``: plain, and as DynamicUser= lays it out.
UNIT_STATE_DIRECTORY = "spoold"
DEFAULT_STATE_DIRS = (
    Path("/var/lib") / UNIT_STATE_DIRECTORY,
    Path("/var/lib/private") / UNIT_STATE_DIRECTORY,
)
#: A directory holds a spool if one of these is there.
SPOOL_FILES = ("spool.db", "deadletters.sqlite", "runs-index.sqlite")


class SpoolNotFound(Exception):
    """No usable spool directory; the message says where we looked and what to do."""


@dataclass(frozen=True)
class Located:
    path: Path
    source: str  # where the path came from, for the operator


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines as systemd's EnvironmentFile= reads them (comments, quotes)."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _holds_spool(path: Path) -> bool:
    try:
        return path.is_dir() and any((path / name).exists() for name in SPOOL_FILES)
    except PermissionError as exc:
        raise SpoolNotFound(
            f"{path}: permission denied; run as root (the daemon's state directory is private)"
        ) from exc
    except OSError:
        return False


def _configured(
    flag: Path | None, env: Mapping[str, str], env_file: Path, state_dirs: Sequence[Path]
) -> Located | None:
    """The first place that names a spool directory, whether or not it holds one."""
    if flag is not None:
        return Located(flag, "--spool-dir")
    if env.get("SPOOLD_SPOOL_DIR"):
        return Located(Path(env["SPOOLD_SPOOL_DIR"]), "SPOOLD_SPOOL_DIR")
    try:
        from_file = read_env_file(env_file).get("SPOOLD_SPOOL_DIR")
    except FileNotFoundError:
        from_file = None
    except OSError as exc:
        raise SpoolNotFound(
            f"cannot read {env_file} ({exc.strerror}); run as root, or pass --spool-dir"
        ) from exc
    if from_file:
        path = Path(from_file)
        if not path.is_absolute():  # the unit runs the daemon in its state directory
            path = state_dirs[0] / path
        return Located(path, str(env_file))
    if env.get("STATE_DIRECTORY"):  # systemd may list several, separated by ':'; ours is first
        return Located(Path(env["STATE_DIRECTORY"].split(":")[0]), "STATE_DIRECTORY")
    for state_dir in state_dirs:
        if _holds_spool(state_dir):
            return Located(state_dir, "the unit's StateDirectory")
    return None


def locate_spool_dir(
    flag: Path | None,
    env: Mapping[str, str],
    *,
    env_file: Path = DEFAULT_ENV_FILE,
    state_dirs: Sequence[Path] = DEFAULT_STATE_DIRS,
) -> Located:
    """The spool directory the daemon uses; SpoolNotFound if none, or it holds no spool."""
    found = _configured(flag, env, env_file, state_dirs)
    if found is None:
        looked = ", ".join(str(path) for path in state_dirs)
        raise SpoolNotFound(
            "no spool directory configured or found: pass --spool-dir, set SPOOLD_SPOOL_DIR, "
            f"or set it in the env file ({env_file}); looked in {looked}"
        )
    if not _holds_spool(found.path):
        raise SpoolNotFound(
            f"{found.path} (from {found.source}) holds no spool; refusing to create one there"
        )
    return found
