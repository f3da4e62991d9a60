"""``spoold``: the sidecar daemon and its operator commands.

spoold [serve]                 run the sidecar (the default)
spoold dev                     run telemetry-server and spoold together, embedded defaults
spoold deadletter list|show|replay|purge
spoold spool stats

Operator commands use the spool directory the installed daemon uses: --spool-dir,
else SPOOLD_SPOOL_DIR, else the env file (--env-file, default
/etc/local-telemetry/spoold.env), else /var/lib/spoold (/var/lib/private/spoold
under DynamicUser). They say which one on stderr, and refuse a directory
without a spool rather than create one.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from spoold import __version__
from spoold.cli.locate import DEFAULT_ENV_FILE, SpoolNotFound, locate_spool_dir, read_env_file
from spoold.config import ConfigError, SpooldConfig
from spoold.forward.limits import UpstreamLimits
from spoold.spool import prescan

# The daemon's own modules (spoold.serve) and the operator commands' (spoold.cli) are
# imported where they are used: ``serve`` first starts reading the spool, so that its
# ~0.3 s of imports overlap that read (``spoold.spool.prescan``).

DEV_SERVER_READY_S = 20.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spoold", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "--spool-dir",
        type=Path,
        help="spool directory (SPOOLD_SPOOL_DIR; serve defaults to ./spool or $STATE_DIRECTORY)",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=DEFAULT_ENV_FILE,
        help=f"operator commands: the daemon's env file (default {DEFAULT_ENV_FILE})",
    )
    commands = parser.add_subparsers(dest="command")
    for name in ("serve", "dev"):
        sub = commands.add_parser(
            name,
            help="run the sidecar"
            if name == "serve"
            else "run telemetry-server and spoold locally",
        )
        sub.add_argument("--host", help="listen address (SPOOLD_HOST, default 127.0.0.1)")
        sub.add_argument("--port", type=int, help="listen port (SPOOLD_PORT, default 8765)")
        sub.add_argument(
            "--upstream",
            help="server URL, or replicas' URLs separated by commas, most preferred first "
            "(SPOOLD_UPSTREAM_URL, default http://127.0.0.1:8766)",
        )
        sub.add_argument(
            "--spool-dir",
            type=Path,
            dest="sub_spool_dir",
            default=argparse.SUPPRESS,
            help="spool directory",
        )
    dead = commands.add_parser("deadletter", help="inspect, replay or purge dead letters")
    dead_commands = dead.add_subparsers(dest="action", required=True)
    listing = dead_commands.add_parser("list")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--offset", type=int, default=0)
    show = dead_commands.add_parser("show")
    show.add_argument("id", type=int)
    for sub in (listing, show):
        sub.add_argument(
            "--spool-dir",
            type=Path,
            dest="sub_spool_dir",
            default=argparse.SUPPRESS,
            help="spool directory",
        )
    for action in ("replay", "purge"):
        sub = dead_commands.add_parser(action)
        sub.add_argument("ids", type=int, nargs="*", help="ids (all when none are given)")
        if action == "replay":
            sub.add_argument(
                "--force",
                action="store_true",
                help="also replay letters of runs the spool no longer remembers, as they are",
            )
        sub.add_argument(
            "--spool-dir",
            type=Path,
            dest="sub_spool_dir",
            default=argparse.SUPPRESS,
            help="spool directory",
        )
    spool = commands.add_parser("spool", help="spool statistics")
    spool.add_argument(
        "--spool-dir",
        type=Path,
        dest="sub_spool_dir",
        default=argparse.SUPPRESS,
        help="spool directory",
    )
    spool.add_argument("action", choices=["stats"])
    return parser


def _config(args: argparse.Namespace) -> SpooldConfig:
    return SpooldConfig.from_env(
        os.environ,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        upstream_url=getattr(args, "upstream", None),
        spool_dir=getattr(args, "sub_spool_dir", None) or args.spool_dir,
    )


def serve(config: SpooldConfig) -> int:
    """Run the sidecar; its spool is read while the daemon's modules are imported."""
    prescan.start(Path(config.spool_dir))
    from spoold.serve import serve as run_sidecar

    return run_sidecar(config)


def dev(config: SpooldConfig) -> int:
    """The main job on one host: the server as a child process, the sidecar in this one."""
    server = subprocess.Popen([sys.executable, "-m", "server"])
    try:
        deadline = time.monotonic() + DEV_SERVER_READY_S
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{config.upstream_urls[0]}/health", timeout=0.5):  # noqa: S310
                    break
            except OSError:
                time.sleep(0.1)
        if server.poll() is not None:
            print("spoold dev: telemetry-server failed to start", file=sys.stderr)
            return 1
        print(
            f"spoold dev: server at {config.upstream_url}, sidecar at "
            f"http://{config.host}:{config.port} (TELEMETRY_API_URL for agents)",
            file=sys.stderr,
        )
        return serve(config)
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()


def daemon_limits(env_file: Path) -> UpstreamLimits:
    """The server's limits as the installed daemon applies them at its door: from its env
    file, overridden by this environment (as for the spool directory)."""
    try:
        from_file = read_env_file(env_file)
    except OSError:  # absent or unreadable: the environment and the defaults decide
        from_file = {}
    config = SpooldConfig.from_env({**from_file, **os.environ})
    return UpstreamLimits(config.upstream_max_body_bytes, config.upstream_max_json_depth)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"spoold: configuration error: {exc}", file=sys.stderr)
        return 2
    command = args.command or "serve"
    if command == "serve":
        return serve(config)
    if command == "dev":
        return dev(config)
    from server.runtime.logs import configure_logging
    from spoold.cli import commands as cli

    configure_logging("WARNING", stream=sys.stderr)  # operator commands: stdout is JSON only
    try:
        flag = getattr(args, "sub_spool_dir", None) or args.spool_dir
        located = locate_spool_dir(flag, os.environ, env_file=args.env_file)
    except SpoolNotFound as exc:
        print(f"spoold: {exc}", file=sys.stderr)
        return 2
    print(f"spoold: using spool directory {located.path} (from {located.source})", file=sys.stderr)
    spool_dir = located.path
    if command == "spool":
        return cli.spool_stats(spool_dir)
    if args.action == "list":
        return cli.deadletter_list(spool_dir, limit=args.limit, offset=args.offset)
    if args.action == "show":
        return cli.deadletter_show(spool_dir, args.id)
    if args.action == "replay":
        try:
            limits = daemon_limits(args.env_file)
        except ConfigError as exc:
            print(f"spoold: configuration error in {args.env_file}: {exc}", file=sys.stderr)
            return 2
        return cli.deadletter_replay(spool_dir, args.ids or None, force=args.force, limits=limits)
    return cli.deadletter_purge(spool_dir, args.ids or None)


if __name__ == "__main__":
    sys.exit(main())
