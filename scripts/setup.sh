#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: Debian's ffmpeg (musdb/museval need it on PATH), and a
# virtual environment in .venv holding torch, umx-tune (editable) and its dev tools.
# `bash scripts/setup.sh test` also installs the system packages that only the tests need.
# Re-running is cheap: pip runs again only when pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]} (Debian packages)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  apt_install ffmpeg
fi
if [ "${1:-}" = "test" ]; then
  # postgresql: the deployment test's database server; a Java runtime: pyspark's local Spark;
  # chromium and a font: the MLflow UI browser test (tests/test_browser.py)
  apt_install ffmpeg postgresql openjdk-17-jre-headless chromium fonts-dejavu-core
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.umx-tune-setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # torch 2.14.1 with torchaudio 2.11.0 is the pair that imports together (openunmix needs both)
  .venv/bin/python -m pip install -q torch==2.14.1 torchaudio==2.11.0
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" >"$stamp"
fi
