# shellcheck shell=bash disable=SC2034  # settings are used by the scripts that source this
# Shared settings and helpers for slurm/{up,down,status}.sh -- sourced, not run.
# Everything (configs, state, logs, pid files, sockets) lives under $STATE.

STATE=${AISTACK_SLURM_DIR:-/var/tmp/aistack-slurm}
CLUSTER_NAME=${AISTACK_SLURM_CLUSTER:-aistack}
NNODES=${AISTACK_SLURM_NODES:-2}                 # slurmd daemons on this host (node1..nodeN)
NODE_CPUS=${AISTACK_SLURM_NODE_CPUS:-32}         # declared, not real: oversubscribes the host
NODE_MEM_MB=${AISTACK_SLURM_NODE_MEM_MB:-16000}  # declared; memory is not a consumable resource
NODE_GPUS=${AISTACK_SLURM_NODE_GPUS:-8}          # fake GRES gpus per node
CTLD_PORT=${AISTACK_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${AISTACK_SLURM_SLURMD_PORT:-6818}   # node i listens on SLURMD_PORT + 10 + i
DBD_PORT=${AISTACK_SLURM_DBD_PORT:-6819}
MAX_ARRAY_SIZE=1001
MAX_JOB_COUNT=20000
GRACE_TIME=${AISTACK_SLURM_GRACE_TIME:-10}     # seconds between SIGTERM and SIGKILL of a preempted job
LIMITED_QOS=limited                              # a QOS with a low submit limit, for tests
LIMITED_QOS_MAX_SUBMIT=${AISTACK_SLURM_LIMITED_MAX_SUBMIT:-60}
LIMITED_QOS_MAX_RUNNING=${AISTACK_SLURM_LIMITED_MAX_RUNNING:--1}   # MaxJobsPerUser (-1: none); a 128-node cluster on 2 cores needs one

# Debian's client commands read this path; up.sh links it to the generated config.
SYSTEM_SLURM_CONF=/etc/slurm/slurm.conf
SLURM_CONF_FILE=$STATE/etc/slurm.conf
MYSQL_SOCK=$STATE/run/mysqld.sock
MUNGE_SOCK=$STATE/run/munge.socket.2

# Daemons get a clean environment so the caller's venv/env never leaks into jobs' parents.
DAEMON_ENV=(env -i "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            "LANG=C.UTF-8" "HOME=/root" "SLURM_CONF=$SLURM_CONF_FILE" "MYSQL_UNIX_PORT=$MYSQL_SOCK")

node_names() { local i; for ((i = 1; i <= NNODES; i++)); do echo "node$i"; done; }

# All daemons in start order: "name:pidfile:process-name".
daemons() {
  echo "munged:$STATE/run/munged.pid:munged"
  echo "mariadb:$STATE/run/mariadbd.pid:mariadbd"
  echo "slurmdbd:$STATE/run/slurmdbd.pid:slurmdbd"
  echo "slurmctld:$STATE/run/slurmctld.pid:slurmctld"
  # Configured nodes, plus any slurmd left from a run with more nodes (so down.sh stops it).
  local n f
  {
    node_names
    for f in "$STATE"/run/slurmd-*.pid; do [[ -e $f ]] || continue; basename "$f" .pid | sed 's/^slurmd-//'; done
  } | sort -u -V | while read -r n; do echo "slurmd-$n:$STATE/run/slurmd-$n.pid:slurmd"; done
}

# alive PID: the process exists and is not a zombie. (PID 1 in some VMs/containers reaps
# orphans only every second or two, so a daemon that has exited can linger as a zombie.)
alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}

# pid_of PIDFILE COMM: print the pid if the pid file names a live process called COMM
# (guards against stale pid files whose pid was reused by something else).
pid_of() {
  local pid
  [[ -r $1 ]] || return 1
  pid=$(tr -dc '0-9' <"$1" 2>/dev/null) || return 1
  [[ -n $pid ]] && alive "$pid" || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] || return 1
  echo "$pid"
}

# stop_daemons NAME...: SIGTERM the named daemons (see `daemons`) together, wait up to
# 20 s for all of them, then SIGKILL what is left. Stale pid files are removed.
stop_daemons() {
  local want name pidfile comm pid pids=() files=() left
  for want in "$@"; do
    while IFS=: read -r name pidfile comm; do
      [[ $name == "$want" ]] || continue
      if pid=$(pid_of "$pidfile" "$comm"); then
        log "stopping $name ($pid)"
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
      fi
      files+=("$pidfile")
    done < <(daemons)
  done
  for _ in $(seq 200); do
    left=0
    for pid in "${pids[@]}"; do alive "$pid" && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if alive "$pid"; then log "pid $pid ignored SIGTERM; killing"; kill -KILL "$pid" 2>/dev/null || true; fi
  done
  ((${#files[@]} == 0)) || rm -f "${files[@]}"
}

# Slurm client commands against our config, quietly, with a timeout so a dead
# controller cannot hang the scripts.
sl() { SLURM_CONF=$SLURM_CONF_FILE timeout 15 "$@"; }

# Nodes that are not usable: down, drained, unknown or not responding ("*" suffix).
bad_nodes() {
  sl sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 ~ /\*|down|drain|drng|fail|unk|inval|boot|maint/ {print $1}' | sort -u
}

nodes_healthy() {
  local out
  out=$(sl sinfo -h -N -o '%N %t' 2>/dev/null) || return 1
  [[ $(awk '{print $1}' <<<"$out" | sort -u | wc -l) -eq $NNODES ]] || return 1
  [[ -z $(bad_nodes) ]]
}

# The slurmstepd processes of this cluster (they outlive slurmd), found by their environment.
our_stepds() {
  local p
  for p in $(pgrep -x slurmstepd 2>/dev/null); do
    { tr '\0' '\n' <"/proc/$p/environ"; } 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF_FILE" && echo "$p"
  done
  return 0
}

T0=$(date +%s%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s%N)" 'BEGIN{printf "%.1f", (b-a)/1e9}'; }
log() { echo "[aistack-slurm $(elapsed)s] $*"; }
die() { echo "[aistack-slurm] ERROR: $*" >&2; exit 1; }
