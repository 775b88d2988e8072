#!/usr/bin/env bash
# Stop everything slurm/up.sh started (slurmd(s), slurmctld, slurmdbd, mariadb, munged), by pid file.
# Running jobs are killed (their slurmstepd would otherwise outlive slurmd). Idempotent.
#   bash slurm/down.sh            keep the state dir (configs, DB, job history)
#   bash slurm/down.sh --purge    also delete the state dir
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/lib.sh
source "$HERE/lib.sh"

PURGE=0
for a in "$@"; do
  case $a in
    --purge) PURGE=1 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) die "unknown argument: $a" ;;
  esac
done
[[ $(id -u) -eq 0 ]] || die "must run as root"
if [[ -d $STATE ]]; then
  exec 9>"$STATE/.lock"
  flock -w 300 9 || die "another slurm/up.sh or down.sh holds $STATE/.lock"
fi

# descendants PID...: the PIDs and all their descendants (job processes hang below slurmstepd).
descendants() {
  local frontier=("$@") kids p
  printf '%s\n' "$@"
  while ((${#frontier[@]})); do
    kids=()
    for p in "${frontier[@]}"; do
      # shellcheck disable=SC2207
      kids+=($(pgrep -P "$p" 2>/dev/null || true))
    done
    ((${#kids[@]} == 0)) || printf '%s\n' "${kids[@]}"
    frontier=("${kids[@]}")
  done
}

# 1. Jobs: cancel through slurmctld if it is up, so accounting records them as CANCELLED.
if pid_of "$STATE/run/slurmctld.pid" slurmctld >/dev/null; then
  jobs=$(sl squeue -h -o '%A' 2>/dev/null | tr '\n' ' ' || true)
  if [[ -n ${jobs// /} ]]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    sl scancel $jobs 2>/dev/null || true
    for _ in $(seq 100); do [[ -z $(our_stepds) ]] && break; sleep 0.1; done
  fi
fi

# 2. Daemons. The slurmd(s) and slurmctld go together; slurmdbd after slurmctld so that it can
#    take the controller's last accounting messages; the database and munge last.
# shellcheck disable=SC2046
stop_daemons $(daemons | cut -d: -f1 | grep '^slurmd-') slurmctld
# slurmstepd (and the job processes under it) survive slurmd: end them too.
stepds=$(our_stepds)
if [[ -n $stepds ]]; then
  log "killing leftover slurmstepd: ${stepds//$'\n'/ }"
  # shellcheck disable=SC2086
  mapfile -t tree < <(descendants $stepds)
  kill -TERM "${tree[@]}" 2>/dev/null || true
  sleep 1
  for p in "${tree[@]}"; do
    if alive "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
  done
fi
stop_daemons slurmdbd
stop_daemons mariadb
stop_daemons munged

# 3. Leave /etc/slurm/slurm.conf only if it still points at something.
if [[ $PURGE -eq 1 ]]; then
  if [[ $(readlink "$SYSTEM_SLURM_CONF" 2>/dev/null) == "$SLURM_CONF_FILE" ]]; then
    rm -f "$SYSTEM_SLURM_CONF"
  fi
  log "removing state dir $STATE"
  rm -rf "$STATE"
fi
log "cluster stopped"
