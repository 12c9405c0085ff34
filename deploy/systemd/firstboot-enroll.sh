#!/usr/bin/env bash
# First-boot enrollment of an edgeloop device (run by edgeloop-firstboot.service as root).
#
# 1. Already enrolled: delete any leftover token, exit 0 (idempotent; safe on every boot).
# 2. Read the one-time bootstrap token from the first non-empty file of TOKEN_PATHS (the boot
#    partition, where an operator drops it when flashing, then the token baked into the image).
# 3. Pick the device id (EDGELOOP_AGENT_DEVICE_ID, else <prefix>-<board serial or machine-id>) and
#    keep it in the agent's environment file.
# 4. `edgeloop-agent enroll` as the agent user, the token passed in the environment (never argv).
# 5. Delete every token file; optionally start the agent (--start-agent).
# A failure leaves the token in place and exits non-zero: the unit retries.
#
# Per-class defaults come from /etc/edgeloop/firstboot.env (firmware_images/<class>/firstboot.env).
set -euo pipefail

CLASS_ENV=${EDGELOOP_FIRSTBOOT_CLASS_ENV:-/etc/edgeloop/firstboot.env}
if [[ -r "$CLASS_ENV" ]]; then
    # shellcheck source=/dev/null
    . "$CLASS_ENV"
fi
CONFIG=${EDGELOOP_AGENT_CONFIG:-/etc/edgeloop/agent.toml}
AGENT_BIN=${EDGELOOP_AGENT_BIN:-/opt/edgeloop/venv/bin/edgeloop-agent}
ENV_FILE=${EDGELOOP_FIRSTBOOT_ENV_FILE:-/etc/edgeloop/agent.env}
RUN_AS=${EDGELOOP_FIRSTBOOT_RUN_AS-edgeloop}
TOKEN_PATHS=${EDGELOOP_FIRSTBOOT_TOKEN_PATHS:-${TOKEN_PATHS:-/boot/firmware/edgeloop-bootstrap.token /boot/edgeloop-bootstrap.token /etc/edgeloop/bootstrap.token}}
ID_PREFIX=${EDGELOOP_FIRSTBOOT_ID_PREFIX:-${ID_PREFIX:-edge}}
START_AGENT=0

usage() {
    echo "usage: $0 [--start-agent] [--config FILE] [--agent BIN] [--env-file FILE] [--run-as USER]" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --start-agent) START_AGENT=1 ;;
        --config) CONFIG=${2:?}; shift ;;
        --agent) AGENT_BIN=${2:?}; shift ;;
        --env-file) ENV_FILE=${2:?}; shift ;;
        --run-as) RUN_AS=${2?}; shift ;;
        *) usage ;;
    esac
    shift
done

log() { echo "edgeloop-firstboot: $*" >&2; }

if [[ -r "$ENV_FILE" ]]; then
    set -a
    # shellcheck source=/dev/null
    . "$ENV_FILE"
    set +a
fi

as_agent_user() {
    if [[ -z "$RUN_AS" || "$RUN_AS" == "$(id -un)" ]]; then
        "$@"
    else
        setpriv --reuid="$RUN_AS" --regid="$RUN_AS" --init-groups -- "$@"
    fi
}

delete_tokens() {
    local path
    for path in $TOKEN_PATHS; do
        if [[ -e "$path" ]]; then
            rm -f -- "$path" || log "WARNING: could not delete $path (the token is spent anyway)"
            log "deleted $path"
        fi
    done
}

device_id() {
    local serial=""
    if [[ -r /sys/firmware/devicetree/base/serial-number ]]; then
        serial=$(tr -d '\0' < /sys/firmware/devicetree/base/serial-number)
    fi
    if [[ -z "$serial" && -r /etc/machine-id ]]; then
        serial=$(head -c 16 /etc/machine-id)
    fi
    [[ -n "$serial" ]] || { log "no board serial and no /etc/machine-id: set EDGELOOP_AGENT_DEVICE_ID"; exit 4; }
    printf '%s-%s\n' "$ID_PREFIX" "$serial" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9.\n-' '-'
}

if as_agent_user "$AGENT_BIN" --config "$CONFIG" status --json | grep -q '"enrolled": true'; then
    log "already enrolled; nothing to do"
    delete_tokens
    exit 0
fi

token=""
for path in $TOKEN_PATHS; do
    if [[ -s "$path" ]]; then
        token=$(tr -d '[:space:]' < "$path")
        log "bootstrap token from $path"
        break
    fi
done
if [[ -z "$token" ]]; then
    log "not enrolled and no bootstrap token in: $TOKEN_PATHS"
    exit 3
fi

configured_id() {  # [device] id of the config file (the environment overrides it)
    "$(dirname "$AGENT_BIN")/python" -c 'import sys; from pathlib import Path
from agent.config import load
print(load(Path(sys.argv[1]), env={}).device.id)' "$CONFIG"
}

if [[ -z "${EDGELOOP_AGENT_DEVICE_ID:-}" && -z "$(configured_id)" ]]; then
    EDGELOOP_AGENT_DEVICE_ID=$(device_id)
    (umask 027 && echo "EDGELOOP_AGENT_DEVICE_ID=$EDGELOOP_AGENT_DEVICE_ID" >> "$ENV_FILE")
    log "device id $EDGELOOP_AGENT_DEVICE_ID (kept in $ENV_FILE)"
    export EDGELOOP_AGENT_DEVICE_ID
fi

EDGELOOP_BOOTSTRAP_TOKEN=$token as_agent_user "$AGENT_BIN" --config "$CONFIG" enroll --json
delete_tokens
log "enrolled"

if [[ "$START_AGENT" == 1 ]]; then
    # --no-block: this unit is ordered before the agent's; waiting for it here would deadlock.
    systemctl --no-block start edgeloop-agent.service
fi
