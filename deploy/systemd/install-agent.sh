#!/usr/bin/env bash
# Install the edgeloop agent on a device (Raspberry Pi OS, Jetson Linux, Mendel, any systemd
# Debian/Ubuntu): a system user, a venv with `pip install .[agent]` pinned by constraints.txt, the
# device class's config, first-boot files and unit drop-in, the sandboxed systemd units.
#
# Idempotent: re-running upgrades the package and the packaged files (units, profiles, scripts)
# and never overwrites /etc/edgeloop/agent.toml, agent.env or an enrolled identity.
#
#   sudo deploy/systemd/install-agent.sh --class raspberry-pi-4 --server fleet.example.com:7443 \
#        --ca fleet-ca.pem --token bootstrap.token
#   deploy/systemd/install-agent.sh --dry-run ...     print every step, change nothing
#   deploy/systemd/install-agent.sh --root DIR --no-pip ...   stage the files into DIR to inspect
#        them (no user, chown, venv or systemctl); image builds run the script inside the chroot
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLASS=""
SERVER=""
CA=""
TOKEN=""
SOURCE=""
ROOT=""
PREFIX=/opt/edgeloop
USER_NAME=edgeloop
DRY_RUN=0
APT=1
PIP=1
NOW=0

usage() {
    cat >&2 <<USAGE
usage: $0 [--class NAME] [--server HOST:PORT] [--ca FILE] [--token FILE] [--source PIP_SPEC]
          [--prefix DIR] [--root DIR] [--no-apt] [--no-pip] [--now] [--dry-run]
classes: $(classes | tr '\n' ' ')
USAGE
    exit 2
}

classes() { find "$SRC/firmware_images" -maxdepth 1 -name '*.toml' -printf '%f\n' | sed 's/\.toml$//' | sort; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --class) CLASS=${2:?}; shift ;;
        --server) SERVER=${2:?}; shift ;;
        --ca) CA=${2:?}; shift ;;
        --token) TOKEN=${2:?}; shift ;;
        --source) SOURCE=${2:?}; shift ;;
        --prefix) PREFIX=${2:?}; shift ;;
        --root) ROOT=${2:?}; shift ;;
        --no-apt) APT=0 ;;
        --no-pip) PIP=0 ;;
        --now) NOW=1 ;;
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage ;;
        *) echo "unknown option: $1" >&2; usage ;;
    esac
    shift
done

log() { echo "install-agent: $*" >&2; }

# Every change goes through run (or put): --dry-run prints it instead.
run() {
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

# put MODE SRC DEST: install a packaged file (replaced on every run).
put() {
    run install -D -m "$1" "$2" "$ROOT$3"
}

# keep MODE SRC DEST: install an operator-owned file only when it is absent.
keep() {
    if [[ -e "$ROOT$3" ]]; then
        log "keeping existing $3"
    else
        put "$@"
    fi
}

on_host() { [[ -z "$ROOT" ]]; }

detect_class() {
    local model=""
    [[ -r /proc/device-tree/model ]] && model=$(tr -d '\0' < /proc/device-tree/model)
    case "$model" in
        *"Raspberry Pi 5"*) echo raspberry-pi-5 ;;
        *"Raspberry Pi 4"*) echo raspberry-pi-4 ;;
        *"Jetson"*"Orin Nano"*) echo jetson-orin-nano ;;
        *"Phanbell"*|*"Coral"*) echo coral-dev-board ;;
        *) [[ "$(uname -m)" == x86_64 ]] && echo generic-x86 ;;
    esac
}

[[ -n "$CLASS" ]] || CLASS=$(detect_class) || true
if [[ -z "$CLASS" || ! -f "$SRC/firmware_images/$CLASS.toml" || ! -d "$SRC/firmware_images/$CLASS" ]]; then
    echo "unknown or undetected device class '${CLASS}'" >&2
    usage
fi
if [[ -n "$ROOT" && "$PIP" == 1 ]]; then
    echo "--root stages files only: add --no-pip (a venv cannot be moved into place)" >&2
    exit 2
fi
if [[ "$DRY_RUN" == 0 && -z "$ROOT" && "$(id -u)" != 0 ]]; then
    echo "run as root (or with --dry-run / --root DIR)" >&2
    exit 1
fi
CLASS_DIR="$SRC/firmware_images/$CLASS"
VENV="$PREFIX/venv"
log "class $CLASS, prefix $PREFIX${ROOT:+, staged into $ROOT}${SERVER:+, server $SERVER}"

# 1. System packages (python3-venv is not in every base image).
if [[ "$APT" == 1 ]] && on_host; then
    run apt-get install -y --no-install-recommends python3 python3-venv
fi

# 2. The agent's system user: no login, no home beyond its state directory.
if on_host; then
    if id -u "$USER_NAME" >/dev/null 2>&1; then
        log "user $USER_NAME exists"
    else
        run useradd --system --user-group --home-dir /var/lib/edgeloop --no-create-home \
            --shell /usr/sbin/nologin "$USER_NAME"
    fi
fi

# 3. Directories: config readable by the agent's group only, state owned by the agent.
run install -d -m 0755 "$ROOT$PREFIX" "$ROOT$PREFIX/libexec" "$ROOT$PREFIX/profiles"
run install -d -m 0750 "$ROOT/etc/edgeloop" "$ROOT/var/lib/edgeloop"
if on_host; then
    run chown "root:$USER_NAME" /etc/edgeloop
    run chown "$USER_NAME:$USER_NAME" /var/lib/edgeloop
fi

# 4. The package, pinned by constraints.txt (the same pins as `make setup`).
if [[ "$PIP" == 1 ]]; then
    if [[ -x "$ROOT$VENV/bin/python" ]]; then
        log "venv $VENV exists"
    else
        run python3 -m venv "$ROOT$VENV"
    fi
    run "$ROOT$VENV/bin/pip" install --no-cache-dir --upgrade -c "$SRC/constraints.txt" "${SOURCE:-${SRC}[agent]}"
fi

# 5. Device profiles (not inside the wheel) and the class's files.
for profile in "$SRC"/firmware_images/*.toml; do
    put 0644 "$profile" "$PREFIX/profiles/$(basename "$profile")"
done
put 0755 "$SRC/deploy/systemd/firstboot-enroll.sh" "$PREFIX/libexec/firstboot-enroll.sh"
put 0644 "$CLASS_DIR/firstboot.env" /etc/edgeloop/firstboot.env
if [[ -e "$ROOT/etc/edgeloop/agent.toml" ]]; then
    log "keeping existing /etc/edgeloop/agent.toml"
elif [[ "$DRY_RUN" == 1 ]]; then
    printf '+ write /etc/edgeloop/agent.toml from %s (enroll_endpoint %s)\n' "$CLASS_DIR/agent.toml" "${SERVER:-unchanged}"
else
    sed "s|fleet.example.com:7443|${SERVER:-fleet.example.com:7443}|" "$CLASS_DIR/agent.toml" > "$ROOT/etc/edgeloop/agent.toml"
    chmod 0640 "$ROOT/etc/edgeloop/agent.toml"
fi
if [[ -n "$CA" ]]; then
    put 0644 "$CA" /etc/edgeloop/fleet-ca.pem
fi
if [[ -n "$TOKEN" ]]; then
    if [[ -e "$ROOT/var/lib/edgeloop/identity/device.json" ]]; then
        log "already enrolled: --token ignored"
    else
        keep 0600 "$TOKEN" /etc/edgeloop/bootstrap.token
    fi
fi
if on_host; then
    for file in /etc/edgeloop/agent.toml /etc/edgeloop/firstboot.env; do
        run chown "root:$USER_NAME" "$file"
    done
fi

# 6. Units: the sandboxed agent, first-boot enrollment, the class's drop-in.
UNITS=/etc/systemd/system
put 0644 "$SRC/deploy/systemd/edgeloop-agent.service" "$UNITS/edgeloop-agent.service"
put 0644 "$SRC/deploy/systemd/edgeloop-firstboot.service" "$UNITS/edgeloop-firstboot.service"
put 0644 "$CLASS_DIR/edgeloop-agent.service.d/10-device-class.conf" \
    "$UNITS/edgeloop-agent.service.d/10-device-class.conf"
if on_host; then
    run systemctl daemon-reload
    run systemctl enable edgeloop-firstboot.service edgeloop-agent.service
    if [[ "$NOW" == 1 ]]; then
        run systemctl start edgeloop-firstboot.service edgeloop-agent.service
    fi
else
    run install -d -m 0755 "$ROOT$UNITS/multi-user.target.wants"
    for unit in edgeloop-firstboot.service edgeloop-agent.service; do
        run ln -sfn "$UNITS/$unit" "$ROOT$UNITS/multi-user.target.wants/$unit"
    done
fi
if [[ "$DRY_RUN" == 1 ]]; then
    log "dry run: nothing changed"
else
    log "done"
fi
