#!/usr/bin/env bash
# Install edged as a system service on Raspberry Pi OS (or any Debian with systemd).
#
#   sudo scripts/install-pi.sh              install, or update to this checkout (idempotent)
#   sudo scripts/install-pi.sh --uninstall  remove the service, /opt/edged and its venv;
#                                           keep /etc/edged and /var/lib/edged (recordings: evidence)
#   sudo scripts/install-pi.sh --purge      uninstall, then also delete /etc/edged, /var/lib/edged
#                                           and the edged user
#
# What an install puts where:
#   apt packages       python3, python3-venv, python3-pip, python3-systemd; on a Pi also
#                      python3-picamera2, python3-libcamera, python3-lgpio (only those missing)
#   user edged         a system user (no login, home /var/lib/edged) in the video, audio, gpio groups
#                      (a missing group, e.g. gpio off a Pi, is created: the unit's
#                      SupplementaryGroups= refuses to start without it)
#   /opt/edged/.venv   python3 -m venv --system-site-packages (picamera2's recommended way: the apt
#                      packages above are seen from the venv), edged pip-installed into it
#   /etc/edged/edged.toml         configs/edged.toml, 0640 root:edged, only when absent (never
#                                 overwritten); /opt/edged/edged.toml.example tracks the sample
#   /etc/edged/credentials/       0700 root; sonoran_api_key and bota_token, 0600 root, created
#                                 empty when absent (systemd's LoadCredential= refuses to start a
#                                 unit whose credential file is missing); never overwritten
#   /var/lib/edged     the state folder (systemd's StateDirectory=), 0700 edged, when absent
#   /etc/systemd/system/edged.service, enabled (and started unless --no-start)
#   /usr/lib/systemd/catalog/edged.catalog, when the checkout has systemd/edged.catalog
#
# Options:
#   --root DIR     (or EDGED_ROOT=DIR) prefix every system path with DIR: a scratch tree for tests
#                  or inspection; users are created with useradd --root, units enabled with
#                  systemctl --root, nothing is started. Needs --no-apt.
#   --no-apt       (or EDGED_NO_APT=1) install no system packages; list those missing
#   --no-start     enable the unit, do not start or restart it
#   --source DIR   the edged checkout to install (default: the one holding this script)
# Environment: EDGED_PYTHON (default /usr/bin/python3, the interpreter apt's packages are for);
#   EDGED_DEVICE_MODEL_FILE (default /proc/device-tree/model, where a Pi names itself).
set -euo pipefail

say() { printf 'install-pi: %s\n' "$*"; }
warn() { printf 'install-pi: warning: %s\n' "$*" >&2; }
die() { printf 'install-pi: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

SVC_USER=edged
GROUPS_WANTED=(video audio gpio)
CREDENTIALS=(sonoran_api_key bota_token)
APT_BASE=(python3 python3-venv python3-pip python3-systemd)
APT_PI=(python3-picamera2 python3-libcamera python3-lgpio)

ROOT="${EDGED_ROOT:-}"
NO_APT="${EDGED_NO_APT:-0}"
PY="${EDGED_PYTHON:-/usr/bin/python3}"
MODEL_FILE="${EDGED_DEVICE_MODEL_FILE:-/proc/device-tree/model}"
SRC="$(cd "$(dirname "$0")/.." && pwd)"
ARGS="$*"
MODE=install
START=1

while [ $# -gt 0 ]; do
  case "$1" in
    --uninstall) MODE=uninstall ;;
    --purge) MODE=purge ;;
    --no-apt) NO_APT=1 ;;
    --no-start) START=0 ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT="$2"; shift ;;
    --root=*) ROOT="${1#--root=}" ;;
    --source) [ $# -ge 2 ] || die "--source needs a directory"; SRC="$2"; shift ;;
    --source=*) SRC="${1#--source=}" ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

[ "$(id -u)" = 0 ] || die "must run as root: sudo $0 $ARGS"
if [ -n "$ROOT" ]; then
  ROOT="${ROOT%/}"
  case "$ROOT" in /?*) ;; *) die "--root must be an absolute path other than /, not '$ROOT'" ;; esac
  [ -d "$ROOT" ] || die "--root $ROOT is not a directory"
  [ "$NO_APT" = 1 ] || [ "$MODE" != install ] || die "apt-get installs into / only: add --no-apt to --root $ROOT"
fi

OPT="$ROOT/opt/edged"
VENV="$OPT/.venv"
STAMP="$VENV/.edged-source.sha256"
ETC="$ROOT/etc/edged"
CREDS="$ETC/credentials"
CONFIG="$ETC/edged.toml"
STATE="$ROOT/var/lib/edged"
UNIT="$ROOT/etc/systemd/system/edged.service"
CATALOG="$ROOT/usr/lib/systemd/catalog/edged.catalog"
root_opt=()
[ -n "$ROOT" ] && root_opt=(--root "$ROOT")

changes=0
changed() { changes=$((changes + 1)); say "$*"; }

# --- systemd ---------------------------------------------------------------------------------

# sd_booted(): systemd runs this machine when /run/systemd/system exists. With --root, the
# running systemd is never touched, whatever it is.
systemd_live() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

why_no_systemd() {
  if [ -n "$ROOT" ]; then
    echo "--root $ROOT given"
  else
    echo "systemd is not PID 1 here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown))"
  fi
}

have_systemctl() { command -v systemctl >/dev/null 2>&1; }

# --- users and groups, in $ROOT/etc or through NSS on the real system ----------------------

group_line() {
  if [ -n "$ROOT" ]; then grep -m1 "^$1:" "$ROOT/etc/group" 2>/dev/null; else getent group "$1"; fi
}

user_field() {  # user_field NAME N: field N of the passwd entry
  local line
  if [ -n "$ROOT" ]; then line="$(grep -m1 "^$1:" "$ROOT/etc/passwd" 2>/dev/null)" || return 1
  else line="$(getent passwd "$1")" || return 1; fi
  printf '%s\n' "$line" | cut -d: -f"$2"
}

in_group() {  # in_group USER GROUP
  local members
  members="$(group_line "$2" | cut -d: -f4)" || return 1
  [[ ",$members," == *",$1,"* ]]
}

ensure_user() {
  local g missing=()
  for g in "${GROUPS_WANTED[@]}"; do
    if ! group_line "$g" >/dev/null; then
      groupadd "${root_opt[@]}" --system "$g"
      changed "created system group $g (the unit's SupplementaryGroups= needs it to exist)"
    fi
  done
  if ! user_field "$SVC_USER" 1 >/dev/null; then
    useradd "${root_opt[@]}" --system --user-group --home-dir /var/lib/edged --no-create-home \
      --shell /usr/sbin/nologin --comment "edged bodycam daemon" \
      --groups "$(IFS=,; echo "${GROUPS_WANTED[*]}")" "$SVC_USER"
    changed "created system user $SVC_USER (groups ${GROUPS_WANTED[*]})"
    return
  fi
  for g in "${GROUPS_WANTED[@]}"; do in_group "$SVC_USER" "$g" || missing+=("$g"); done
  if [ ${#missing[@]} -gt 0 ]; then
    usermod "${root_opt[@]}" --append --groups "$(IFS=,; echo "${missing[*]}")" "$SVC_USER"
    changed "added user $SVC_USER to ${missing[*]}"
  fi
}

# --- files -----------------------------------------------------------------------------------

ensure_dir() {  # ensure_dir PATH MODE UID GID: create, or fix the mode and owner of our own folder
  local path=$1 mode=$2 uid=$3 gid=$4
  if [ ! -d "$path" ]; then
    install -d -m "$mode" -o "$uid" -g "$gid" "$path"
    changed "created $path ($mode, uid $uid gid $gid)"
  elif [ "$(stat -c '%a %u %g' "$path")" != "${mode#0} $uid $gid" ]; then
    chmod "$mode" "$path"
    chown "$uid:$gid" "$path"
    changed "set $path to mode $mode, uid $uid gid $gid"
  fi
}

FILE_CHANGED=0
ensure_file() {  # ensure_file SRC DST MODE: a root-owned copy, rewritten only when it differs
  local src=$1 dst=$2 mode=$3
  FILE_CHANGED=0
  if [ -f "$dst" ] && cmp -s "$src" "$dst" && [ "$(stat -c '%a %u %g' "$dst")" = "${mode#0} 0 0" ]; then
    return 0
  fi
  install -D -m "$mode" -o 0 -g 0 "$src" "$dst"
  FILE_CHANGED=1
  changed "installed $dst"
}

source_digest() {  # what decides whether the venv needs edged installed again
  (cd "$SRC" && find pyproject.toml README.md edged -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
     -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

# --- install ---------------------------------------------------------------------------------

RESTART=0  # set when the code or the unit changed: a running service restarts

on_pi() { grep -qs "Raspberry Pi" "$MODEL_FILE"; }

model_name() {
  if [ -r "$MODEL_FILE" ]; then tr -d '\0' <"$MODEL_FILE"; else echo "absent"; fi
}

apt_packages() {
  local pkgs=("${APT_BASE[@]}") missing=() p
  if on_pi; then
    pkgs+=("${APT_PI[@]}")
  else
    warn "not a Raspberry Pi ($MODEL_FILE: $(model_name)): skipping ${APT_PI[*]};" \
      "the camera will be a USB (V4L2) camera or the synthetic test pattern"
  fi
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  if [ "$NO_APT" = 1 ]; then
    warn "--no-apt: not installing the missing system packages: ${missing[*]}"
    return 0
  fi
  say "installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  changes=$((changes + 1))
}

check_source() {
  local f
  for f in pyproject.toml README.md edged/__init__.py configs/edged.toml systemd/edged.service; do
    [ -f "$SRC/$f" ] || die "$SRC is not an edged checkout: $f is missing (use --source DIR)"
  done
}

check_python() {
  [ -x "$PY" ] || die "$PY not found: apt-get install python3 (or set EDGED_PYTHON)"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PY is Python $("$PY" -c 'import platform; print(platform.python_version())'); edged needs 3.11 or newer"
  "$PY" -c 'import venv, ensurepip' 2>/dev/null || die "$PY cannot make virtual environments: apt-get install python3-venv"
}

venv_works() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -I -B -c "$1" 2>/dev/null; }

install_venv() {
  local digest tmp
  digest="$(source_digest)"
  if venv_works 'import edged' && [ "$(cat "$STAMP" 2>/dev/null)" = "$digest" ]; then
    return 0
  fi
  ensure_dir "$OPT" 0755 0 0
  if ! venv_works 'import sys'; then
    rm -rf -- "$VENV"
    "$PY" -m venv --system-site-packages "$VENV"
    changed "created $VENV (--system-site-packages: apt's picamera2, libcamera and systemd are visible)"
  fi
  # pip builds a local folder in place (build/, *.egg-info): give it a copy, not the checkout.
  tmp="$(mktemp -d)"
  cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/edged" "$tmp/"
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-cache-dir -q "$tmp"; then
    rm -rf -- "$tmp"
    die "pip could not install edged into $VENV (see above)"
  fi
  rm -rf -- "$tmp"
  "$VENV/bin/python" -I -c 'import edged, av' || die "edged was installed into $VENV but does not import"
  printf '%s\n' "$digest" >"$STAMP"
  RESTART=1
  changed "installed edged from $SRC into $VENV"
}

install_config() {
  local gid=$1 cred
  ensure_dir "$ETC" 0755 0 0
  if [ -e "$CONFIG" ]; then
    say "kept $CONFIG (an existing configuration is never overwritten; the sample is $OPT/edged.toml.example)"
  else
    install -m 0640 -o 0 -g "$gid" "$SRC/configs/edged.toml" "$CONFIG"
    changed "installed $CONFIG (0640 root:$SVC_USER) from configs/edged.toml"
  fi
  ensure_file "$SRC/configs/edged.toml" "$OPT/edged.toml.example" 0644
  ensure_dir "$CREDS" 0700 0 0
  for cred in "${CREDENTIALS[@]}"; do
    if [ -e "$CREDS/$cred" ]; then
      if [ "$(stat -c '%a' "$CREDS/$cred")" != 600 ]; then
        warn "$CREDS/$cred has mode $(stat -c '%a' "$CREDS/$cred"), left as it is: chmod 600 it"
      fi
    else
      install -m 0600 -o 0 -g 0 /dev/null "$CREDS/$cred"
      changed "created empty $CREDS/$cred (0600 root): write the key there if a target needs it"
    fi
  done
}

install_state_dir() {  # created once; afterwards systemd's StateDirectory= owns its mode and owner
  local uid=$1 gid=$2
  if [ ! -d "$STATE" ]; then
    install -d -m 0700 -o "$uid" -g "$gid" "$STATE"
    changed "created $STATE (0700 $SVC_USER)"
  fi
}

install_unit() {
  ensure_file "$SRC/systemd/edged.service" "$UNIT" 0644
  if [ "$FILE_CHANGED" = 1 ]; then RESTART=1; fi
  if [ ! -f "$SRC/systemd/edged.catalog" ]; then
    return 0
  fi
  ensure_file "$SRC/systemd/edged.catalog" "$CATALOG" 0644
  if [ "$FILE_CHANGED" = 1 ]; then
    if command -v journalctl >/dev/null 2>&1; then
      journalctl "${root_opt[@]}" --update-catalog
      say "journal catalog updated"
    else
      warn "journalctl not found: the catalog is installed but not compiled"
    fi
  fi
}

enable_unit() {
  if ! have_systemctl; then
    warn "systemctl not found: the unit is installed but not enabled"
    return 0
  fi
  if systemd_live && [ "$RESTART" = 1 ]; then
    systemctl daemon-reload
  fi
  if ! systemctl "${root_opt[@]}" is-enabled --quiet edged.service 2>/dev/null; then
    systemctl "${root_opt[@]}" enable --quiet edged.service
    changed "enabled edged.service"
  fi
  if ! systemd_live; then
    say "not starting edged.service: $(why_no_systemd); it starts at the next boot"
  elif [ "$START" = 0 ]; then
    say "--no-start: start it with: systemctl start edged"
  elif ! systemctl is-active --quiet edged.service; then
    systemctl start edged.service
    changed "started edged.service"
  elif [ "$RESTART" = 1 ]; then
    systemctl restart edged.service
    changed "restarted edged.service (new code or unit)"
  fi
}

do_install() {
  local uid gid
  check_source
  apt_packages
  check_python
  ensure_user
  uid="$(user_field "$SVC_USER" 3)"
  gid="$(user_field "$SVC_USER" 4)"
  install_venv
  install_config "$gid"
  install_state_dir "$uid" "$gid"
  install_unit
  enable_unit
  if [ "$changes" = 0 ]; then
    say "nothing to do: edged is installed and up to date"
  fi
  say "next: edit $CONFIG, put API keys in $CREDS/ (0600 root), then check with:"
  say "  $VENV/bin/edged doctor --config /etc/edged/edged.toml"
}

# --- uninstall -------------------------------------------------------------------------------

do_uninstall() {
  local path
  if have_systemctl && [ -e "$UNIT" ]; then
    if systemd_live; then
      systemctl disable --now --quiet edged.service || warn "systemctl disable --now edged failed"
    else
      systemctl "${root_opt[@]}" disable --quiet edged.service || warn "systemctl disable edged failed"
      say "not stopping edged.service: $(why_no_systemd)"
    fi
  fi
  if [ -e "$CATALOG" ]; then
    rm -f -- "$CATALOG"
    changed "removed $CATALOG"
    if command -v journalctl >/dev/null 2>&1; then
      journalctl "${root_opt[@]}" --update-catalog
    fi
  fi
  for path in "$UNIT" "$OPT"; do
    if [ -e "$path" ]; then
      rm -rf -- "$path"
      changed "removed $path"
    fi
  done
  if systemd_live; then
    systemctl daemon-reload
  fi
  if [ "$MODE" = purge ]; then
    for path in "$ETC" "$STATE"; do
      if [ -e "$path" ]; then
        rm -rf -- "$path"
        changed "deleted $path"
      fi
    done
    if user_field "$SVC_USER" 1 >/dev/null; then
      userdel "${root_opt[@]}" "$SVC_USER"
      changed "deleted user $SVC_USER (the groups ${GROUPS_WANTED[*]} are left)"
    fi
    if group_line "$SVC_USER" >/dev/null; then  # userdel leaves it without USERGROUPS_ENAB
      groupdel "${root_opt[@]}" "$SVC_USER"
      changed "deleted group $SVC_USER"
    fi
  else
    say "kept $ETC (configuration, credentials), $STATE (recordings: evidence) and user $SVC_USER;"
    say "  --purge deletes them"
  fi
  if [ "$changes" = 0 ]; then
    say "nothing to remove: edged is not installed"
  fi
}

case "$MODE" in
  install) do_install ;;
  uninstall | purge) do_uninstall ;;
esac
