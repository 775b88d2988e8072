#!/usr/bin/env bash
# Build the local OCI bundle that Slurm's own container support (`srun --container=BUNDLE`,
# slurm/templates/oci.conf.in) runs jobs in: BUNDLE/config.json and BUNDLE/rootfs/, a CPU
# Debian bookworm (minbase) with Debian's python3 and a venv, /opt/aistack/venv, holding
# aistack (non-editable, from this checkout) and its dependencies: the submitting venv's
# installed packages, file for file (submitit's pickles must load on both sides).
#
#   bash containers/oci/build.sh [--check]      (make container-bundle runs it)
#
# Two cached layers, each rebuilt only when its inputs change (a hash of them is kept in
# the bundle): the base (Debian packages, the venv and every dependency: a minute with
# debootstrap, seconds after; the Debian part is kept as a tar, reused while the package
# list stays) and aistack
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
  rm -rf "$NEW" && mkdir -p "$NEW" "$OUT/cache/debs"
  DEBIAN_TAR=$OUT/cache/debian-$DEBIAN_KEY.tar
  if [[ -f $DEBIAN_TAR ]]; then
    log "Debian layer from $DEBIAN_TAR"
    mkdir -p "$ROOTFS" && tar -C "$ROOTFS" --numeric-owner -xpf "$DEBIAN_TAR"
  else
    log "debootstrap $SUITE (minbase + $DEB_PACKAGES) into $ROOTFS"
    debian_layer "$ROOTFS"
    rm -f "$OUT"/cache/debian-*.tar
    tar -C "$ROOTFS" --numeric-owner -cpf "$DEBIAN_TAR.tmp" . && mv "$DEBIAN_TAR.tmp" "$DEBIAN_TAR"
  fi

  # The dependencies: the submitting venv's installed packages themselves, file for file
  # (aistack's editable install excepted: the aistack layer below installs it), so both
  # sides unpickle with exactly the same code. Same Python minor version, same Debian: the
  # same wheels would install the same files. Hard links where the file system allows.
  host_version=$("$VENV_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  image_version=$(in_image python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [[ $host_version == "$image_version" ]] \
    || die "the image's Python $image_version is not the venv's $host_version: their packages are not interchangeable"
  log "creating $IMAGE_VENV with the venv's packages (Python $host_version)"
  in_image python3 -m venv --without-pip "$IMAGE_VENV"
  HOST_SITE=$("$VENV_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  IMAGE_SITE=$ROOTFS$IMAGE_VENV/lib/python$host_version/site-packages
  packages=()
  while IFS= read -r -d '' entry; do packages+=("$entry"); done < <(cd "$HOST_SITE" && find . -mindepth 1 -maxdepth 1 \
    ! -name '__editable__*' ! -name 'aistack-*.dist-info' -print0)
  (cd "$HOST_SITE" && { cp -al "${packages[@]}" "$IMAGE_SITE/" 2>/dev/null || cp -a "${packages[@]}" "$IMAGE_SITE/"; })
  # Console scripts name the venv's interpreter: name the image's.
  HOST_BIN=$(cd "$(dirname "$VENV_PYTHON")" && pwd)
  for script in "$HOST_BIN"/*; do
    [[ -f $script && ! -L $script && $(basename "$script") != aistack ]] || continue
    IFS= read -r first <"$script" || true
    [[ $first == "#!$HOST_BIN/python"* ]] || continue
    { echo "#!$IMAGE_VENV/bin/python"; tail -n +2 "$script"; } >"$ROOTFS$IMAGE_VENV/bin/$(basename "$script")"
    chmod 755 "$ROOTFS$IMAGE_VENV/bin/$(basename "$script")"
  done
  log "compiling what has no bytecode yet"
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
  in_image python -m pip install -q --no-index --no-deps --force-reinstall --no-compile "/tmp/build/$wheel"
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
