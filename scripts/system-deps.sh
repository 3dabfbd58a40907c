#!/usr/bin/env bash
# Installs the Debian packages geo_service needs, when they are missing.
#   scripts/system-deps.sh          what `make run` needs: Python venv, PostgreSQL, PostGIS
#   scripts/system-deps.sh --test   plus what the test suite needs
#   scripts/system-deps.sh --bench  plus what the benchmarks need
# As root it installs with apt-get; otherwise it prints the exact command and fails.
set -euo pipefail

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
want() { for package in "$@"; do installed "$package" || missing+=("$package"); done; }

install_missing() {
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing system packages: ${missing[*]}" >&2
    echo "install them with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  missing=()
}

if ! command -v dpkg-query >/dev/null; then
  echo "error: this script installs Debian packages; on another system install PostgreSQL and PostGIS yourself" >&2
  exit 1
fi

# A Debian python3 needs python3-venv for `python3 -m venv`; other Pythons bring it along.
if ! "${PYTHON:-python3}" -c "import ensurepip, venv" 2>/dev/null; then want python3-venv; fi

# The PostgreSQL server first: its major version decides which PostGIS package fits.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || want postgresql
install_missing
version=$(ls -d /usr/lib/postgresql/*/bin/initdb | sed -E 's#.*/postgresql/([0-9]+)/bin/initdb#\1#' | sort -n | tail -1)
want "postgresql-${version}-postgis-3"

for option in "$@"; do
  case "$option" in
    --test) want gdal-bin chromium fonts-noto-cjk nginx ;;
    --bench) want wrk chromium fonts-noto-cjk ;;
    *) echo "error: unknown option $option (use --test or --bench)" >&2; exit 2 ;;
  esac
done
install_missing
echo "system packages present (PostgreSQL ${version} with PostGIS)"
