#!/bin/bash
# Installs what nasfs needs from Debian bookworm, builds it (build/) and
# installs nasfs and nasfsctl system-wide. Idempotent: run it again after a
# `git pull`; it reconfigures and rebuilds what changed.
#
#   sudo bash scripts/setup.sh
#
# Environment:
#   BUILD_DIR=build      meson build directory (relative to the repo)
#   NASFS_SKIP_APT=1     do not touch apt (offline machines that already have
#                        the packages); otherwise apt-get update + install run
#                        every time (a no-op when everything is installed)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-build}
cd "$REPO"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, meson install): sudo bash scripts/setup.sh"
[ -r /etc/os-release ] && . /etc/os-release
if [ "${ID:-}" != debian ] || [ "${VERSION_CODENAME:-}" != bookworm ]; then
  echo "setup.sh: warning: written for Debian 12 (bookworm); this is ${PRETTY_NAME:-unknown}" >&2
fi

# Exactly what the project needs, all from Debian main (bookworm):
#   build:    meson ninja-build pkg-config g++
#   libs:     libfuse3-dev liburing-dev libspdlog-dev libfmt-dev libxxhash-dev
#             libexpected-dev (tl::expected, header only) nlohmann-json3-dev
#             libcli11-dev (nasfsctl's command line)
#   tests:    libgtest-dev libgmock-dev; bindfs (a NAS that can be hung or
#             killed), attr (getfattr/setfattr), psmisc (fuser)
#   runtime:  fuse3 (/dev/fuse, fusermount3, /sbin/mount.fuse3 for fstab)
#   bench:    nginx-light wrk fio
#   nets:     clang-16 libclang-rt-16-dev (libFuzzer and clang's sanitizer
#             runtimes, for scripts/nets.sh's fuzz build); gcc's ASan, UBSan
#             and TSan runtimes come with g++
PACKAGES=(
  meson ninja-build pkg-config g++
  libfuse3-dev fuse3 liburing-dev libspdlog-dev libfmt-dev libxxhash-dev
  libgtest-dev libgmock-dev libexpected-dev nlohmann-json3-dev libcli11-dev
  bindfs nginx-light wrk fio attr psmisc
  clang-16 libclang-rt-16-dev
)

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

if [ "${NASFS_SKIP_APT:-0}" = 1 ]; then
  say "Skipping apt (NASFS_SKIP_APT=1)"
  m=$(missing_packages)
  [ -z "$m" ] || die "NASFS_SKIP_APT=1 but these packages are missing: $(echo $m)"
else
  say "Installing Debian packages: ${PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get update -q </dev/null; then
    # An offline re-run on a machine that has everything is not an error.
    [ -z "$(missing_packages)" ] || die "apt-get update failed and packages are missing"
    echo "setup.sh: warning: apt-get update failed; every package is already installed, going on" >&2
  fi
  apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${PACKAGES[@]}" </dev/null
fi

# FUSE needs the kernel module and /dev/fuse (containers must pass it in).
if [ ! -c /dev/fuse ]; then
  modprobe fuse 2>/dev/null || true
  [ -c /dev/fuse ] || echo "setup.sh: warning: no /dev/fuse: nasfs cannot mount here (in a container, pass --device /dev/fuse --cap-add SYS_ADMIN)" >&2
fi

say "Building (meson + ninja) in $BUILD_DIR/"
if [ -f "$BUILD_DIR/meson-private/coredata.dat" ]; then
  # Existing build dir: pick up meson.build changes; a dir made by another
  # meson version gets wiped and set up again (its options are kept).
  meson setup --reconfigure -Dtests=true "$BUILD_DIR" || meson setup --wipe -Dtests=true "$BUILD_DIR"
else
  meson setup -Dtests=true "$BUILD_DIR"   # test.sh needs the tests built
fi
ninja -C "$BUILD_DIR"

# Where the binaries go, and why that is enough for fstab:
#
# `meson install` puts nasfs and nasfsctl in /usr/local/sbin (meson's default
# prefix /usr/local: the FHS place for software not from a .deb, so nothing
# dpkg owns is touched and `rm /usr/local/sbin/nasfs*` uninstalls).
#
# An fstab line of type fuse.nasfs reaches nasfs like this, verified on
# bookworm (util-linux 2.38.1, fuse3 3.14.0):
#   mount(8) finds no /sbin/mount.fuse.nasfs, so it falls back to the helper
#   of the main type, /sbin/mount.fuse (-> mount.fuse3, from the fuse3
#   package); no nasfs-specific helper is needed.
#   mount(8) runs that helper with PATH removed from its environment;
#   mount.fuse3 then runs `/bin/sh -c 'nasfs SOURCE MOUNTPOINT -o ...'`, and a
#   shell without PATH searches its built-in default, which is
#   /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin for dash
#   (Debian's /bin/sh) and for Debian's bash alike. systemd mounts run
#   mount(8) too, and systemd's own default PATH starts with /usr/local/sbin.
# So /usr/local/sbin is found on every path that goes through mount(8); we
# check it below exactly the way mount.fuse3 does instead of adding a
# symlink into /usr/sbin, which belongs to dpkg.
say "Installing nasfs and nasfsctl (meson install -> /usr/local/sbin)"
meson install -C "$BUILD_DIR" --no-rebuild --quiet
PREFIX=$(meson introspect "$BUILD_DIR" --buildoptions | python3 -c \
  'import json,sys; o={x["name"]: x["value"] for x in json.load(sys.stdin)}; print(o["prefix"] + "/" + o["sbindir"])')

say "Checking that mount(8) will find them"
found=$(env -i /bin/sh -c 'command -v nasfs' || true)
[ "$found" = "$PREFIX/nasfs" ] \
  || die "a PATH-less /bin/sh (what mount.fuse3 runs) finds '${found:-nothing}', not $PREFIX/nasfs"
[ -x /sbin/mount.fuse ] || die "/sbin/mount.fuse is missing (package fuse3)"
echo "nasfs:    $found ($("$found" --version))"
echo "nasfsctl: $(env -i /bin/sh -c 'command -v nasfsctl')"
echo "fstab type fuse.nasfs -> /sbin/mount.fuse -> $(readlink -f /sbin/mount.fuse) -> $found"
say "Setup done"
