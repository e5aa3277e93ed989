#!/usr/bin/env bash
# Installs the Debian packages xlkv builds with, when they are missing (apt-get; uses sudo when not root).
# Says what it installs; does nothing when everything is present. Used by `make run` and `make test`.
set -euo pipefail
packages=(cmake make gcc pkg-config libcjson-dev libopenblas-openmp-dev libcmocka-dev libpcre2-dev liblzma-dev libbz2-dev libmicrohttpd-dev openmpi-bin libopenmpi-dev chromium python3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "setup: installing missing Debian packages: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
