#!/usr/bin/env bash
# Install what the local Slurm cluster (and the tests) need, from Debian/Ubuntu packages.
# Idempotent: returns at once when everything is already there.
set -euo pipefail

# runc: the OCI runtime of `srun --container` (oci.conf; its wrapper runs on python3);
# debootstrap: builds the image it runs (make container-bundle).
need_bins=(slurmctld slurmd slurmdbd munged munge mariadbd mariadb mariadb-install-db sbatch pgrep runc debootstrap python3)
missing=()
for b in "${need_bins[@]}"; do
  command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || missing+=("$b")
done
# python3-doc: the tests use its HTML pages as a small local data set.
[[ -d /usr/share/doc/python3-doc/html ]] || missing+=(python3-doc)
# libmagic1: datatrove's WARC reader detects content types with python-magic.
ls /usr/lib/*/libmagic.so.1 >/dev/null 2>&1 || missing+=(libmagic1)
if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "[aistack-slurm] missing: ${missing[*]}; installing packages" >&2
if [[ $(id -u) -ne 0 ]]; then
  echo "[aistack-slurm] ERROR: installing packages needs root; run: sudo bash $0" >&2
  exit 1
fi
command -v apt-get >/dev/null || { echo "[aistack-slurm] ERROR: apt-get not found (Debian/Ubuntu only)" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
apt-get update
# Package scripts try to start services; there is no init system here, and
# up.sh starts the daemons itself, so forbid that during the install.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created_policy=1
fi
trap 'if [[ $created_policy -eq 1 ]]; then rm -f "$policy"; fi' EXIT
apt-get install -y --no-install-recommends \
  slurm-wlm slurmdbd munge mariadb-server mariadb-client python3-doc libmagic1 procps runc debootstrap python3
echo "[aistack-slurm] packages installed" >&2
