#!/usr/bin/env bash
# Build a stand-in for the pinned python:3.11 slim-bookworm base image from Debian packages, for
# machines that cannot pull from an image registry. Usage: standin.sh TAG
#
# The result is laid out like the upstream image as far as the Dockerfiles use it: `python`,
# `python3` and `pip`-capable venvs (python3.11-venv), a shared libpython (Triton's Python backend
# links it), groupadd/useradd, the Debian CA store. Needs root, debootstrap and a Docker engine.
set -euo pipefail

tag="${1:?usage: standin.sh TAG}"
suite="${STANDIN_SUITE:-bookworm}"
mirror="${STANDIN_MIRROR:-http://deb.debian.org/debian}"
packages="python3.11 python3.11-venv libpython3.11 ca-certificates"

if [ "$(id -u)" != 0 ]; then
    echo "standin.sh: debootstrap needs root" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "standin.sh: debootstrap is not installed" >&2; exit 1; }

root="$(mktemp -d "${TMPDIR:-/tmp}/standin-base.XXXXXX")"
trap 'rm -rf "$root"' EXIT

echo "stand-in base: debootstrap --variant=minbase $suite from $mirror, then apt-get install $packages"
log="$root.log"
{
    debootstrap --variant=minbase "$suite" "$root" "$mirror" &&
        chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive LC_ALL=C \
            sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends $packages && apt-get clean"
} >"$log" 2>&1 || {
    tail -n 30 "$log" >&2
    rm -f "$log"
    exit 1
}
rm -f "$log"

# Where the upstream image has them: python on PATH as `python` and `python3`.
ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python"
ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python3"

# Nothing the images need at run time: apt's lists and caches, docs, man pages, locales.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/var/log/*.log "$root"/tmp/* "$root"/var/tmp/*
# A clean resolv.conf/hostname: the engine provides both at run time.
: >"$root/etc/resolv.conf"
: >"$root/etc/hostname"

tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change "LABEL org.opencontainers.image.description=\"Debian $suite + Debian's python3.11 (stand-in for python:3.11-slim-$suite)\"" \
    - "$tag" >/dev/null
echo "stand-in base: imported as $tag"
