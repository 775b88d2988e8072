#!/usr/bin/env bash
# Start the single-host dev/CI Slurm cluster: munged -> mariadb -> slurmdbd -> slurmctld -> slurmd(s).
# Idempotent: a healthy cluster is left alone; a dead daemon is restarted; stale pid files,
# sockets and job state from earlier runs are fine. No systemd: daemons are started directly.
# Settings (env): AISTACK_SLURM_DIR (state dir, default /var/tmp/aistack-slurm), see slurm/lib.sh.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/lib.sh
source "$HERE/lib.sh"

[[ $(id -u) -eq 0 ]] || die "must run as root (daemons, /etc/slurm/slurm.conf); try: sudo bash $0"
for b in munged mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sbatch sacctmgr; do
  command -v "$b" >/dev/null || die "$b not found; run: bash $HERE/install.sh"
done

umask 022
# The state folder holds the slurm.conf and prolog that root's daemons run, under a folder
# anyone may write to (/var/tmp): it must be root's own, made by us or by root before.
if [[ -e $STATE || -L $STATE ]]; then
  [[ -d $STATE && ! -L $STATE && $(stat -c %u "$STATE") == 0 ]] \
    || die "$STATE exists but is not a folder owned by root: refusing to run daemons from it (remove it, or set AISTACK_SLURM_DIR)"
  (( (8#$(stat -c %a "$STATE") & 8#022) == 0 )) || die "$STATE is writable by others than root: refusing (chmod go-w it, or remove it)"
fi
mkdir -p "$STATE"/{etc,run,log,ctld,spool,munge,fakegpu}
chmod 700 "$STATE/munge"
# One up.sh/down.sh at a time (e.g. parallel test sessions starting the cluster together).
# Daemons are started with 9>&- so that they do not inherit (and keep) the lock.
exec 9>"$STATE/.lock"
flock -w 300 9 || die "another slurm/up.sh or down.sh holds $STATE/.lock"

# ---------------------------------------------------------------- configs
# Rendered on every run (host name may differ between CI boots); only rewritten if changed.
HOST=$(hostname -s)
[[ -s $STATE/etc/db.pass ]] || { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$STATE/etc/db.pass"; }
chmod 600 "$STATE/etc/db.pass"
DB_PASS=$(cat "$STATE/etc/db.pass")
RUNC=$(command -v runc || true)        # optional: the OCI runtime of `srun --container`
SCONTROL=$(command -v scontrol)

NODE_LIST="node[1-$NNODES]"; [[ $NNODES -eq 1 ]] && NODE_LIST=node1
NODE_LINES=""
for ((i = 1; i <= NNODES; i++)); do
  gres=""; [[ $NODE_GPUS -gt 0 ]] && gres=" Gres=gpu:$NODE_GPUS"
  # All nodes share this host: distinct names and ports, same address.
  NODE_LINES+="NodeName=node$i NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + 10 + i)) CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB$gres State=UNKNOWN"$'\n'
done
# Fake GPU "devices": gres.conf File= must name character devices; links to /dev/null are.
for ((g = 0; g < NODE_GPUS; g++)); do
  [[ -L $STATE/fakegpu/gpu$g ]] || { rm -f "$STATE/fakegpu/gpu$g"; ln -s /dev/null "$STATE/fakegpu/gpu$g"; }
done

# render TEMPLATE OUT MODE: substitute @VARS@; sets CONFIG_CHANGED=1 if OUT changed.
CONFIG_CHANGED=0
shopt -u patsub_replacement 2>/dev/null || true   # bash 5.2: "&" in a value must stay literal
render() {
  local text
  text=$(<"$1")
  text=${text//@STATE@/$STATE}
  text=${text//@CLUSTER_NAME@/$CLUSTER_NAME}
  text=${text//@HOSTNAME@/$HOST}
  text=${text//@CTLD_PORT@/$CTLD_PORT}
  text=${text//@SLURMD_PORT@/$SLURMD_PORT}
  text=${text//@DBD_PORT@/$DBD_PORT}
  text=${text//@MAX_ARRAY_SIZE@/$MAX_ARRAY_SIZE}
  text=${text//@MAX_JOB_COUNT@/$MAX_JOB_COUNT}
  text=${text//@GRACE_TIME@/$GRACE_TIME}
  text=${text//@NODE_LINES@/$NODE_LINES}
  text=${text//@NODE_LIST@/$NODE_LIST}
  text=${text//@GPU_MAX_INDEX@/$((NODE_GPUS - 1))}
  text=${text//@DB_PASS@/$DB_PASS}
  text=${text//@RUNC@/$RUNC}
  text=${text//@SCONTROL@/$SCONTROL}
  if [[ ! -f $2 ]] || [[ $(<"$2") != "$text" ]]; then
    printf '%s\n' "$text" >"$2.tmp" && mv "$2.tmp" "$2"
    CONFIG_CHANGED=1
  fi
  chmod "$3" "$2"
}
render "$HERE/templates/slurm.conf.in" "$STATE/etc/slurm.conf" 644
render "$HERE/templates/slurmdbd.conf.in" "$STATE/etc/slurmdbd.conf" 600  # slurmdbd insists on 600
if [[ $NODE_GPUS -gt 0 ]]; then
  render "$HERE/templates/gres.conf.in" "$STATE/etc/gres.conf" 644
else
  rm -f "$STATE/etc/gres.conf"
fi

# Slurm's OCI container support (`srun --container=BUNDLE`, see oci.conf.in): oci.conf and
# its runtime wrapper. slurmstepd reads both at each container step, so a change to them
# restarts no daemon. Without runc there is no oci.conf: `--container` is then ignored.
mkdir -p "$STATE/libexec"
if [[ -n $RUNC ]]; then
  cmp -s "$HERE/oci_run.py" "$STATE/libexec/oci-run" || install -m 755 "$HERE/oci_run.py" "$STATE/libexec/oci-run"
  slurm_changed=$CONFIG_CHANGED
  render "$HERE/templates/oci.conf.in" "$STATE/etc/oci.conf" 644
  CONFIG_CHANGED=$slurm_changed
else
  rm -f "$STATE/etc/oci.conf"
fi

# Plain `sbatch`/`squeue`/... in any shell read /etc/slurm/slurm.conf: point it at ours.
# (AISTACK_SLURM_LINK_CONF=0 skips this, e.g. when another cluster owns that path; then
# clients need SLURM_CONF=$SLURM_CONF_FILE.)
if [[ ${AISTACK_SLURM_LINK_CONF:-1} == 1 ]]; then
  mkdir -p "$(dirname "$SYSTEM_SLURM_CONF")"
  if [[ -e $SYSTEM_SLURM_CONF && ! -L $SYSTEM_SLURM_CONF ]]; then
    bak=$SYSTEM_SLURM_CONF.aistack-backup.$(date +%Y%m%d%H%M%S)
    log "moving existing $SYSTEM_SLURM_CONF to $bak"
    mv "$SYSTEM_SLURM_CONF" "$bak"
  fi
  [[ $(readlink "$SYSTEM_SLURM_CONF" 2>/dev/null) == "$SLURM_CONF_FILE" ]] || ln -sfn "$SLURM_CONF_FILE" "$SYSTEM_SLURM_CONF"
fi

# Node names must resolve, as on a real cluster: jobs use the first node's name as the
# torch.distributed rendezvous address (submitit's MASTER_ADDR).
for node in $(node_names); do
  grep -qE "^127\.0\.0\.1[[:space:]].*\b$node\b" /etc/hosts || echo "127.0.0.1 $node  # aistack slurm/up.sh" >>/etc/hosts
done

# ---------------------------------------------------------------- already up?
all_running() {
  local name pidfile comm
  while IFS=: read -r name pidfile comm; do
    [[ $name == slurmd-* ]] && ! node_names | grep -qx "${name#slurmd-}" && continue
    pid_of "$pidfile" "$comm" >/dev/null || return 1
  done < <(daemons)
}
if [[ $CONFIG_CHANGED -eq 0 ]] && all_running && nodes_healthy && sl sacct -n -X -S now-1minutes >/dev/null 2>&1; then
  log "cluster already up and healthy (state: $STATE)"
  sl sinfo
  exit 0
fi

# A changed slurm config needs the Slurm daemons restarted (munge/mariadb are unaffected).
if [[ $CONFIG_CHANGED -eq 1 ]] && pid_of "$STATE/run/slurmctld.pid" slurmctld >/dev/null; then
  log "config changed: restarting the Slurm daemons"
fi
if [[ $CONFIG_CHANGED -eq 1 ]]; then
  # shellcheck disable=SC2046
  stop_daemons slurmctld $(daemons | cut -d: -f1 | grep '^slurmd-') slurmdbd
fi

# wait_for DESC SECONDS LOGFILE CMD...: poll CMD every 0.2 s; on timeout show the log and fail.
wait_for() {
  local desc=$1 secs=$2 logf=$3; shift 3
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then
      echo "--- last lines of $logf ---" >&2; tail -n 30 "$logf" >&2 2>/dev/null || true
      die "timed out after ${secs}s waiting for $desc"
    fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------- munged
if pid_of "$STATE/run/munged.pid" munged >/dev/null; then
  log "munged already running"
else
  if [[ ! -s $STATE/munge/munge.key ]]; then
    # A fresh random key per state dir; only this cluster's daemons use it.
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 600 "$STATE/munge/munge.key"
  rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock" "$STATE/run/munged.pid"
  log "starting munged"
  "${DAEMON_ENV[@]}" munged --key-file="$STATE/munge/munge.key" --socket="$MUNGE_SOCK" \
    --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" \
    --seed-file="$STATE/munge/munged.seed" --num-threads=4 </dev/null >>"$STATE/log/munged.log" 2>&1 9>&-
  wait_for munged 15 "$STATE/log/munged.log" sh -c "munge -s x -S '$MUNGE_SOCK' | unmunge -S '$MUNGE_SOCK'"
fi

# ---------------------------------------------------------------- mariadb
MYSQL_DIR=$STATE/mysql
# shellcheck disable=SC2120  # called with -e by wait_for below
sql() { mariadb --no-defaults --socket="$MYSQL_SOCK" -u root "$@"; }
if pid_of "$STATE/run/mariadbd.pid" mariadbd >/dev/null; then
  log "mariadb already running"
else
  if [[ ! -f $MYSQL_DIR/.aistack-initialised ]]; then
    # First start (or an interrupted init): build a private datadir; root logs in via unix socket.
    log "initialising mariadb datadir"
    rm -rf "$MYSQL_DIR"
    mariadb-install-db --no-defaults --datadir="$MYSQL_DIR" --user=root \
      --auth-root-authentication-method=socket --skip-test-db \
      >"$STATE/log/mariadb-install.log" 2>&1 || { tail -n 30 "$STATE/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    touch "$MYSQL_DIR/.aistack-initialised"
  fi
  rm -f "$MYSQL_SOCK" "$MYSQL_SOCK.lock" "$STATE/run/mariadbd.pid"   # stale after a crash
  log "starting mariadb"
  # --no-defaults: ignore /etc/mysql (system socket/datadir); no TCP, only our socket.
  setsid "${DAEMON_ENV[@]}" mariadbd --no-defaults --user=root --datadir="$MYSQL_DIR" \
    --socket="$MYSQL_SOCK" --pid-file="$STATE/run/mariadbd.pid" --log-error="$STATE/log/mariadb.log" \
    --skip-networking --skip-name-resolve --innodb-buffer-pool-size=128M \
    --innodb-lock-wait-timeout=900 --max-allowed-packet=64M \
    </dev/null >>"$STATE/log/mariadb.log" 2>&1 9>&- &
  wait_for mariadb 60 "$STATE/log/mariadb.log" sql -e 'SELECT 1'
  chmod 644 "$STATE/run/mariadbd.pid"   # created 660; status.sh may run as any user
fi
# The DB user slurmdbd logs in as (idempotent; also resyncs the password).
# shellcheck disable=SC2119
sql <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# ---------------------------------------------------------------- slurmdbd
if pid_of "$STATE/run/slurmdbd.pid" slurmdbd >/dev/null; then
  log "slurmdbd already running"
else
  log "starting slurmdbd"
  # Reads slurmdbd.conf next to $SLURM_CONF; finds our mariadb socket through MYSQL_UNIX_PORT.
  "${DAEMON_ENV[@]}" slurmdbd </dev/null >>"$STATE/log/slurmdbd.log" 2>&1 9>&-
fi
wait_for slurmdbd 60 "$STATE/log/slurmdbd.log" sl sacctmgr -n list cluster

# Register the cluster (slurmctld needs it) and a default account, once.
if [[ -z $(sl sacctmgr -n -P list cluster "$CLUSTER_NAME" format=Cluster) ]]; then
  log "registering cluster $CLUSTER_NAME in accounting"
  sl sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
fi
if [[ -z $(sl sacctmgr -n -P list account aistack format=Account) ]]; then
  sl sacctmgr -i add account aistack Cluster="$CLUSTER_NAME" Description=aistack Organization=aistack >/dev/null
  sl sacctmgr -i add user root Account=aistack Cluster="$CLUSTER_NAME" >/dev/null
fi
# A QOS with a site-like submit limit (every array task counts as a job), for the tests
# that submit under it; `normal` stays the default and unlimited.
if [[ -z $(sl sacctmgr -n -P list qos "$LIMITED_QOS" format=Name) ]]; then
  sl sacctmgr -i add qos "$LIMITED_QOS" MaxSubmitJobsPerUser="$LIMITED_QOS_MAX_SUBMIT" >/dev/null
fi
if [[ $(sl sacctmgr -n -P list qos "$LIMITED_QOS" format=MaxSubmitPU) != "$LIMITED_QOS_MAX_SUBMIT" ]]; then
  sl sacctmgr -i modify qos "$LIMITED_QOS" set MaxSubmitJobsPerUser="$LIMITED_QOS_MAX_SUBMIT" >/dev/null
fi
# How many of its jobs may run at once (sites cap this too): a rehearsal of thousands of
# tasks on 128 slurmd daemons of one small host stays within what the host can run.
sl sacctmgr -i modify qos "$LIMITED_QOS" set MaxJobsPerUser="$LIMITED_QOS_MAX_RUNNING" >/dev/null || true
if ! sl sacctmgr -n -P list assoc user=root format=QOS | tr ',' '\n' | grep -qx "$LIMITED_QOS"; then
  sl sacctmgr -i modify user root set QOS+="$LIMITED_QOS" >/dev/null
fi

# ---------------------------------------------------------------- slurmctld
if pid_of "$STATE/run/slurmctld.pid" slurmctld >/dev/null; then
  log "slurmctld already running"
else
  log "starting slurmctld"
  "${DAEMON_ENV[@]}" slurmctld </dev/null >>"$STATE/log/slurmctld.log" 2>&1 9>&-
fi
wait_for slurmctld 60 "$STATE/log/slurmctld.log" sl scontrol ping

# ---------------------------------------------------------------- slurmd (one per node)
for n in $(node_names); do
  mkdir -p "$STATE/spool/$n"
  if pid_of "$STATE/run/slurmd-$n.pid" slurmd >/dev/null; then
    log "slurmd $n already running"
  else
    log "starting slurmd $n"
    # -N: this slurmd serves node $n (several slurmd share this host, each on its own Port=).
    "${DAEMON_ENV[@]}" slurmd -N "$n" </dev/null >>"$STATE/log/slurmd-$n.log" 2>&1 9>&-
  fi
done

# Nodes left down/drained by an earlier run (e.g. a killed slurmd) are put back in service.
end=$((SECONDS + 60))
until nodes_healthy; do
  for n in $(bad_nodes); do
    state=$(sl sinfo -h -n "$n" -o '%t' | head -n1)
    # Not while "*" (not responding): that one just needs its slurmd to register.
    if [[ $state == *down* || $state == *drain* || $state == *fail* ]] && [[ $state != *'*' ]]; then
      sl scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true
    fi
  done
  if ((SECONDS >= end)); then
    sl sinfo -N -l >&2 || true
    for n in $(node_names); do echo "--- slurmd-$n.log ---" >&2; tail -n 15 "$STATE/log/slurmd-$n.log" >&2 || true; done
    die "nodes did not become idle within 60s"
  fi
  sleep 0.3
done
wait_for sacct 30 "$STATE/log/slurmdbd.log" sl sacct -n -X -S now-1minutes

# ---------------------------------------------------------------- summary
log "cluster $CLUSTER_NAME is up"
log "state dir: $STATE   logs: $STATE/log   config: $SLURM_CONF_FILE"
if [[ $(readlink "$SYSTEM_SLURM_CONF" 2>/dev/null) == "$SLURM_CONF_FILE" ]]; then
  log "clients use it through $SYSTEM_SLURM_CONF (plain sbatch/squeue/sacct work)"
else
  log "$SYSTEM_SLURM_CONF is not ours: clients need SLURM_CONF=$SLURM_CONF_FILE"
fi
sl sinfo -N -o '%N %P %t %c %m %G'
sl scontrol show config | grep -E '^(MaxArraySize|MaxJobCount|SelectTypeParameters) '
