#!/usr/bin/env bash
# Build the local OCI bundle that Slurm's own container support (`srun --container=BUNDLE`,
# slurm/templates/oci.conf.in) runs jobs in: BUNDLE/config.json and BUNDLE/rootfs/, a CPU
# Debian bookworm (minbase) with Debian's python3 and a venv, /opt/aistack/venv, holding
# aistack (non-editable, from this checkout) and its dependencies at exactly the versions
# of the submitting venv (submitit's pickles must load on both sides).
#
#   bash containers/oci/build.sh [--check]      (make container-bundle runs it)
#
# Two cached layers, each rebuilt only when its inputs change (a hash of them is kept in
# the bundle): the base (Debian packages, the venv and every dependency: minutes; the
# Debian part is also kept as a tar, reused while the package list stays) and aistack
# itself (lib/, jobs/, pyproject.toml: seconds). --check builds nothing: it exits
# 0 when both are current, 1 when only aistack is stale, 2 when the base is (or no bundle).
# Settings (env): AISTACK_OCI_DIR (default containers/build), AISTACK_OCI_MIRROR,
# VENV_PYTHON (the submitting venv's python, default .venv/bin/python).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${AISTACK_OCI_DIR:-$REPO/containers/build}
BUNDLE=$OUT/aistack-oci
MIRROR=${AISTACK_OCI_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# python3-venv: the image's venv; libmagic1: datatrove's WARC reader (python-magic);
# slurm-client: submitit calls `scontrol requeue` from the job when its time is nearly up
# (the node's Slurm config and munge socket are mounted at run time, slurm/oci_run.py).
DEB_PACKAGES=python3,python3-venv,libmagic1,ca-certificates,slurm-client
IMAGE_VENV=/opt/aistack/venv
VENV_PYTHON=${VENV_PYTHON:-$REPO/.venv/bin/python}

T0=$SECONDS
log() { echo "[container-bundle $((SECONDS - T0))s] $*" >&2; }
die() { echo "[container-bundle] ERROR: $*" >&2; exit 1; }

CHECK=0
case ${1:-} in
  --check) CHECK=1 ;;
  "") ;;
  *) die "unknown argument: $1 (usage: $0 [--check])" ;;
esac
[[ -x $VENV_PYTHON ]] || die "$VENV_PYTHON not found: run make venv first"

# ---------------------------------------------------------------- inputs and their hashes
# The submitting venv's versions, pinned: what the image installs (aistack itself excluded).
LOCK=$OUT/requirements.lock
LOCK_TEXT=$("$VENV_PYTHON" -m pip freeze --exclude-editable --disable-pip-version-check 2>/dev/null \
  | grep -v -e '^#' -e '^aistack[= @]')
BASE_KEY=$({
  cat "$HERE/build.sh" "$HERE/config.py" "$REPO/constraints.txt" "$REPO/pyproject.toml"
  echo "$LOCK_TEXT"
  echo "$SUITE $DEB_PACKAGES $IMAGE_VENV"
} | sha256sum | cut -c1-16)
# aistack: every file its wheel is built from (the recipes folder installs as share/aistack/recipes).
SOURCES=(pyproject.toml README.md)
while IFS= read -r f; do SOURCES+=("$f"); done < <(cd "$REPO" && { find lib/aistack jobs -name '*.py' -not -path '*/__pycache__/*'
  find lib/aistack/model/nemo_templates recipes -type f; } | LC_ALL=C sort)
APP_KEY=$( (cd "$REPO" && sha256sum "${SOURCES[@]}") | sha256sum | cut -c1-16)

base_current() { [[ -f $BUNDLE/.base-$BASE_KEY && -d $BUNDLE/rootfs ]]; }
app_current() { [[ -f $BUNDLE/.aistack-$APP_KEY ]]; }
if ((CHECK)); then
  if ! base_current; then echo "base layer missing or stale (base $BASE_KEY)"; exit 2; fi
  if ! app_current; then echo "aistack layer stale (aistack $APP_KEY)"; exit 1; fi
  echo "current: $BUNDLE (base $BASE_KEY, aistack $APP_KEY)"; exit 0
fi
if base_current && app_current && [[ -f $BUNDLE/config.json ]]; then
  log "up to date: $BUNDLE (base $BASE_KEY, aistack $APP_KEY)"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "building the root file system needs root (debootstrap, chroot); try: sudo make container-bundle"
command -v debootstrap >/dev/null || die "debootstrap not found; run: bash slurm/install.sh"
mkdir -p "$OUT"
printf '%s\n' "$LOCK_TEXT" >"$LOCK"

# in_image CMD...: run CMD in the root file system ROOTFS with a clean environment (no pip
# settings, PYTHONPATH or venv of this shell leak in).
in_image() {
  chroot "$ROOTFS" /usr/bin/env -i PATH="$IMAGE_VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin" HOME=/root LANG=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$@"
}
# compile_image DIR: bytecode now, since the image is mounted read-only in jobs (some
# packages ship files that are not Python 3.11, so compileall's status is not checked).
compile_image() { in_image python3 -m compileall -q -j 0 "$1" >/dev/null 2>&1 || true; }

# debian_layer ROOTFS: the image's Debian part. Kept in the cache as a tar keyed by this
# function's text and the package list, so that new Python pins do not rerun debootstrap.
debian_layer() {
  debootstrap --variant=minbase --include="$DEB_PACKAGES" --cache-dir="$OUT/cache/debs" \
    "$SUITE" "$1" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 \
    || { tail -n 30 "$OUT/debootstrap.log" >&2; die "debootstrap failed (log: $OUT/debootstrap.log)"; }
  rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*
  # No munge key in the image (jobs talk to the node's munged through its socket), and a
  # mount point for the node's slurm.conf.
  rm -f "$1/etc/munge/munge.key"
  mkdir -p "$1/etc/slurm" && touch "$1/etc/slurm/slurm.conf"
}
DEBIAN_KEY=$({ declare -f debian_layer; echo "$SUITE $DEB_PACKAGES $MIRROR"; } | sha256sum | cut -c1-16)

# ---------------------------------------------------------------- base layer
if ! base_current; then
  NEW=$OUT/aistack-oci.new
  ROOTFS=$NEW/rootfs
  rm -rf "$NEW" && mkdir -p "$NEW" "$OUT/cache/debs" "$OUT/cache/wheels"
  DEBIAN_TAR=$OUT/cache/debian-$DEBIAN_KEY.tar
  debian_pid=
  if [[ -f $DEBIAN_TAR ]]; then
    log "Debian layer from $DEBIAN_TAR"
    mkdir -p "$ROOTFS" && tar -C "$ROOTFS" --numeric-owner -xpf "$DEBIAN_TAR"
  else
    # In the background: debootstrap and the wheels below wait on different servers.
    log "debootstrap $SUITE (minbase + $DEB_PACKAGES) into $ROOTFS, while the wheels are collected"
    (
      debian_layer "$ROOTFS"
      rm -f "$OUT"/cache/debian-*.tar
      tar -C "$ROOTFS" --numeric-owner -cpf "$DEBIAN_TAR.tmp" . && mv "$DEBIAN_TAR.tmp" "$DEBIAN_TAR"
    ) &
    debian_pid=$!
  fi

  # Wheels for aistack's dependency closure (pyproject.toml), built by the submitting venv's
  # pip (same Python 3.11 ABI and platform) at the lock's versions: sdists are built once
  # here, and pip in the image installs offline. The wheel folder is a cache between builds.
  "$VENV_PYTHON" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
    "$REPO/pyproject.toml" >"$OUT/requirements.in"
  wheels_stamp=$OUT/cache/wheels/.complete-$(cat "$LOCK" "$OUT/requirements.in" "$REPO/constraints.txt" | sha256sum | cut -c1-16)
  if [[ ! -f $wheels_stamp ]]; then
    log "collecting wheels (pinned to the venv's versions) into $OUT/cache/wheels"
    "$VENV_PYTHON" -m pip wheel -q --disable-pip-version-check -w "$OUT/cache/wheels" \
      -c "$REPO/constraints.txt" -c "$LOCK" -r "$OUT/requirements.in" >"$OUT/wheels.log" 2>&1 \
      || { tail -n 30 "$OUT/wheels.log" >&2; [[ -z $debian_pid ]] || wait "$debian_pid" || true
           die "pip wheel failed (log: $OUT/wheels.log)"; }
    rm -f "$OUT"/cache/wheels/.complete-* && touch "$wheels_stamp"
  fi

  if [[ -n $debian_pid ]]; then
    wait "$debian_pid" || die "the Debian layer failed (log: $OUT/debootstrap.log)"
    log "Debian layer ready"
  fi
  log "creating $IMAGE_VENV and installing the dependencies"
  in_image python3 -m venv "$IMAGE_VENV"
  mkdir -p "$ROOTFS/tmp/build"
  cp -al "$OUT/cache/wheels" "$ROOTFS/tmp/build/wheels" 2>/dev/null || cp -a "$OUT/cache/wheels" "$ROOTFS/tmp/build/wheels"
  cp "$LOCK" "$ROOTFS/tmp/build/requirements.lock"
  cp "$REPO/constraints.txt" "$ROOTFS/tmp/build/constraints.txt"
  cp "$OUT/requirements.in" "$ROOTFS/tmp/build/requirements.in"
  in_image pip install -q --no-index --find-links /tmp/build/wheels --no-compile \
    -c /tmp/build/constraints.txt -c /tmp/build/requirements.lock -r /tmp/build/requirements.in
  rm -rf "$ROOTFS/tmp/build"
  log "compiling bytecode"
  compile_image "$IMAGE_VENV/lib"
  touch "$NEW/.base-$BASE_KEY"
  # Swap in the new bundle. (The old one is deleted: a job still running in it may fail.)
  if [[ -d $BUNDLE ]]; then mv "$BUNDLE" "$OUT/aistack-oci.old"; fi
  mv "$NEW" "$BUNDLE"
  rm -rf "$OUT/aistack-oci.old"
fi

# ---------------------------------------------------------------- aistack layer
ROOTFS=$BUNDLE/rootfs
if ! app_current; then
  log "installing aistack from this checkout (aistack $APP_KEY)"
  SRC=$OUT/src
  rm -rf "$SRC" && mkdir -p "$SRC"
  (cd "$REPO" && cp --parents "${SOURCES[@]}" "$SRC/")
  rm -rf "$ROOTFS/tmp/build" && mkdir -p "$ROOTFS/tmp/build"
  # Built from a copy of the hashed files (no build/ or egg-info in the checkout).
  "$VENV_PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
    -w "$ROOTFS/tmp/build" "$SRC" >"$OUT/aistack-wheel.log" 2>&1 \
    || { tail -n 30 "$OUT/aistack-wheel.log" >&2; die "building the aistack wheel failed"; }
  wheel=$(cd "$ROOTFS/tmp/build" && ls aistack-*.whl)
  in_image pip install -q --no-index --no-deps --force-reinstall --no-compile "/tmp/build/$wheel"
  rm -rf "$ROOTFS/tmp/build" "$SRC"
  compile_image "$IMAGE_VENV/lib/python3.11/site-packages/aistack"
  rm -f "$BUNDLE"/.aistack-*
  touch "$BUNDLE/.aistack-$APP_KEY"
fi

# ---------------------------------------------------------------- label and config.json
# /etc/aistack-image names the layers: a job can tell which image it ran in.
printf 'base=%s aistack=%s\n' "$BASE_KEY" "$APP_KEY" >"$ROOTFS/etc/aistack-image"
"$VENV_PYTHON" "$HERE/config.py" --venv "$IMAGE_VENV" >"$BUNDLE/config.json.tmp"
mv "$BUNDLE/config.json.tmp" "$BUNDLE/config.json"
log "done: $BUNDLE ($(du -sh "$BUNDLE" 2>/dev/null | cut -f1); base $BASE_KEY, aistack $APP_KEY)"
