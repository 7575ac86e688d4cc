#!/usr/bin/env bash
# Installs the system packages reelspool needs to build, test and run its demo on Debian 12.
# Safe to run again; uses sudo when not root.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PACKAGES=(
  # FFmpeg libraries for ffmpeg-next, and what bindgen needs to read their headers
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
  libavfilter-dev libavdevice-dev libclang-dev clang pkg-config
  # ffprobe/ffmpeg: tests check every video we write with the real ffprobe
  ffmpeg openssl
  # useradd/groupadd and setpriv: tests/users.rs creates real users and runs commands as them
  passwd util-linux
  # chromium + chromedriver: tests/http.rs loads the dashboard in a real headless browser
  chromium chromium-driver
  # Slurm (22.05 on Debian 12) and munge: tests/slurm.rs runs jobs on a real one-node cluster
  # that tests/slurm/start-slurm.sh brings up
  slurm-wlm munge
  # prometheus ships promtool: tests/monitoring.rs checks and unit-tests the alert rules
  prometheus
)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${missing[@]}"
fi
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  python3 -m pip install --quiet aiosmtpd || $SUDO python3 -m pip install --quiet --break-system-packages aiosmtpd
fi
# standardwebhooks: the e2e notice tests verify our webhooks with the reference Python library.
STANDARDWEBHOOKS="standardwebhooks==1.1.0"
if ! python3 -c 'import standardwebhooks' 2>/dev/null; then
  python3 -m pip install --quiet "$STANDARDWEBHOOKS" \
    || $SUDO python3 -m pip install --quiet --break-system-packages "$STANDARDWEBHOOKS"
fi
# prometheus-client: tests/http.rs parses /metrics with the reference Python parser.
PROMETHEUS_CLIENT="prometheus-client==0.26.0"
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
  python3 -m pip install --quiet "$PROMETHEUS_CLIENT" \
    || $SUDO python3 -m pip install --quiet --break-system-packages "$PROMETHEUS_CLIENT"
fi
# numpy: the example command engine (engines/python/example_engine.py) and its tests
if ! python3 -c 'import numpy' 2>/dev/null; then
  python3 -m pip install --quiet numpy || $SUDO python3 -m pip install --quiet --break-system-packages numpy
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
