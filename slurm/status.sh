#!/usr/bin/env bash
# Show which daemons of the local dev cluster run, and sinfo. Exit 0 only if all run.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/lib.sh
source "$HERE/lib.sh"

rc=0
echo "state dir: $STATE"
while IFS=: read -r name pidfile comm; do
  if pid=$(pid_of "$pidfile" "$comm"); then
    printf '  %-14s running (pid %s)\n' "$name" "$pid"
  else
    printf '  %-14s stopped\n' "$name"; rc=1
  fi
done < <(daemons)
if pid_of "$STATE/run/slurmctld.pid" slurmctld >/dev/null; then
  sl sinfo -N -o '%N %P %t %c %m %G' || rc=1
fi
exit $rc
