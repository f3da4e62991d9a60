#!/usr/bin/env bash
# Install (or uninstall) Local Telemetry under systemd. Idempotent: run it again to upgrade.
#
#   deploy/install.sh --role server|sidecar|both [--prefix DIR] [--destdir DIR]
#                     [--unit-dir DIR] [--conf-dir DIR] [--no-start]
#   deploy/install.sh --uninstall [--role ...] [--purge]
#
# Installs a virtualenv with this project under PREFIX (/opt/local-telemetry), the units into
# UNIT_DIR (/etc/systemd/system) with their paths rewritten for PREFIX and CONF_DIR, and example
# env files into CONF_DIR (/etc/local-telemetry). An existing <daemon>.env is never overwritten.
# DESTDIR stages everything under another root (paths inside the files stay as if installed),
# and then systemctl is not called. --uninstall keeps the database, the spool and the env
# files unless --purge is given.
#
# Safety: --purge removes only the <daemon>.env files in CONF_DIR and the daemons' state
# directories DESTDIR/var/lib/{,private/}<StateDirectory>, nothing else. Without --destdir it
# touches the host's /var/lib only for a default install (default prefix, unit and conf dirs);
# with any other it refuses, so a test or a staged install can never delete a real one.
# The prefix is removed whole only if this script installed it (its marker file is there).
set -euo pipefail

ROLE=both
PREFIX=/opt/local-telemetry
DESTDIR=${DESTDIR:-}
UNIT_DIR=/etc/systemd/system
CONF_DIR=/etc/local-telemetry
UNINSTALL=0
PURGE=0
START=1
PYTHON=${PYTHON:-python3}
SRC=$(cd "$(dirname "$0")/.." && pwd)

DEFAULT_DIRS="$PREFIX:$UNIT_DIR:$CONF_DIR"
MARKER=.local-telemetry-install

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --role) ROLE=${2:?}; shift 2 ;;
    --role=*) ROLE=${1#*=}; shift ;;
    --prefix) PREFIX=${2:?}; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --destdir) DESTDIR=${2:?}; shift 2 ;;
    --destdir=*) DESTDIR=${1#*=}; shift ;;
    --unit-dir) UNIT_DIR=${2:?}; shift 2 ;;
    --unit-dir=*) UNIT_DIR=${1#*=}; shift ;;
    --conf-dir) CONF_DIR=${2:?}; shift 2 ;;
    --conf-dir=*) CONF_DIR=${1#*=}; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    --no-start) START=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage 2 ;;
  esac
done

case "$ROLE" in
  server) UNITS=(telemetry-server.service); ENVS=(server) ;;
  sidecar) UNITS=(spoold.service); ENVS=(spoold) ;;
  both) UNITS=(telemetry-server.service spoold.service); ENVS=(server spoold) ;;
  *) echo "install.sh: --role must be server, sidecar or both" >&2; exit 2 ;;
esac

root() { printf '%s%s' "$DESTDIR" "$1"; }
say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 2; }

# Every path we write or delete must be absolute and not the root itself.
for pair in "--prefix:$PREFIX" "--unit-dir:$UNIT_DIR" "--conf-dir:$CONF_DIR"; do
  value=${pair#*:}
  case "$value" in
    /*) ;;
    *) die "${pair%%:*} must be an absolute path (got '$value')" ;;
  esac
  [ "${value%/}" != "" ] || die "${pair%%:*} must not be /"
done
if [ -n "$DESTDIR" ]; then
  case "$DESTDIR" in
    /*) ;;
    *) die "--destdir must be an absolute path (got '$DESTDIR')" ;;
  esac
  [ "${DESTDIR%/}" != "" ] || die "--destdir must not be / (leave it out instead)"
  DESTDIR=${DESTDIR%/}
fi

# The state directories --purge may remove (PURGE_DIRS), from each unit's StateDirectory=.
PURGE_DIRS=()
find_state_dirs() {
  local unit state
  for unit in "${UNITS[@]}"; do
    state=$(sed -n 's/^StateDirectory=//p' "$SRC/systemd/$unit")
    case "$state" in
      ''|*/*|.|..|*[!A-Za-z0-9._-]*) die "unexpected StateDirectory='$state' in $unit; refusing to purge" ;;
    esac
    PURGE_DIRS+=("$(root "/var/lib/$state")" "$(root "/var/lib/private/$state")")
  done
}
use_systemctl() {
  [ -z "$DESTDIR" ] && [ "$START" = 1 ] && command -v systemctl >/dev/null 2>&1 \
    && [ -d /run/systemd/system ]
}

do_uninstall() {
  if [ "$PURGE" = 1 ] && [ -z "$DESTDIR" ] && [ "$PREFIX:$UNIT_DIR:$CONF_DIR" != "$DEFAULT_DIRS" ]; then
    die "--purge with a non-default --prefix/--unit-dir/--conf-dir but no --destdir would delete the host's /var/lib data; pass --destdir for a staged install, or purge the default install"
  fi
  if [ "$PURGE" = 1 ]; then find_state_dirs; fi
  if use_systemctl; then
    systemctl disable --now "${UNITS[@]}" || true
  fi
  for unit in "${UNITS[@]}"; do rm -f "$(root "$UNIT_DIR")/$unit"; done
  if use_systemctl; then systemctl daemon-reload || true; fi
  if [ ! -e "$(root "$UNIT_DIR")/telemetry-server.service" ] \
    && [ ! -e "$(root "$UNIT_DIR")/spoold.service" ]; then
    if [ -e "$(root "$PREFIX")/$MARKER" ]; then
      rm -rf "$(root "$PREFIX")"  # no daemon of ours is left: the virtualenv goes too
    else  # not (or not wholly) ours: remove only what we put there
      rm -rf "$(root "$PREFIX")/venv" "$(root "$PREFIX")/README.md"
    fi
  fi
  for name in "${ENVS[@]}"; do rm -f "$(root "$CONF_DIR")/$name.env.example"; done
  if [ "$PURGE" = 1 ]; then
    for name in "${ENVS[@]}"; do rm -f "$(root "$CONF_DIR")/$name.env"; done
    rmdir "$(root "$CONF_DIR")" 2>/dev/null || true
    for dir in "${PURGE_DIRS[@]}"; do
      if [ -e "$dir" ] || [ -L "$dir" ]; then rm -rf "$dir"; say "removed $dir"; fi
    done
    say "purged configuration and data"
  else
    say "kept data (/var/lib/...) and $CONF_DIR/*.env; use --purge to remove them"
  fi
  say "uninstalled ${UNITS[*]}"
}

do_install() {
  local venv
  venv="$(root "$PREFIX")/venv"
  if [ ! -e "$(root "$PREFIX")" ]; then  # a prefix we create is ours to remove on uninstall
    mkdir -p "$(root "$PREFIX")"
    : > "$(root "$PREFIX")/$MARKER"
  fi
  mkdir -p "$(root "$UNIT_DIR")" "$(root "$CONF_DIR")"
  if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --upgrade "$SRC"
  install -m 0644 "$SRC/README.md" "$(root "$PREFIX")/README.md"
  for unit in "${UNITS[@]}"; do
    sed -e "s#/opt/local-telemetry#$PREFIX#g" -e "s#/etc/local-telemetry#$CONF_DIR#g" \
      "$SRC/systemd/$unit" > "$(root "$UNIT_DIR")/$unit.tmp"
    chmod 0644 "$(root "$UNIT_DIR")/$unit.tmp"
    mv "$(root "$UNIT_DIR")/$unit.tmp" "$(root "$UNIT_DIR")/$unit"
  done
  for name in "${ENVS[@]}"; do
    install -m 0644 "$SRC/deploy/$name.env.example" "$(root "$CONF_DIR")/$name.env.example"
    if [ ! -e "$(root "$CONF_DIR")/$name.env" ]; then
      install -m 0600 "$SRC/deploy/$name.env.example" "$(root "$CONF_DIR")/$name.env"
    fi
  done
  if use_systemctl; then
    systemctl daemon-reload
    systemctl enable "${UNITS[@]}"
    systemctl restart "${UNITS[@]}"
    say "started ${UNITS[*]}"
  else
    say "installed without starting (no systemd, --destdir or --no-start)"
  fi
  say "installed ${UNITS[*]} with $venv"
}

if [ "$UNINSTALL" = 1 ]; then do_uninstall; else do_install; fi
