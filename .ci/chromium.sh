#!/usr/bin/env bash
# CI: Debian's headless Chromium for the report's browser test
# (tests/test_report.py::test_report_renders_in_headless_chromium). Installs it unless it is
# already there; run as root on Debian 12. Fonts only from the recommends: the browser is
# driven headless with --disable-gpu, so neither a display nor Mesa is needed.
set -euo pipefail
if dpkg-query -W -f='${Status}\n' chromium 2>/dev/null | grep -q "install ok installed"; then
  echo "chromium already installed"
else
  [ "$(id -u)" = 0 ] || { echo "chromium.sh: run as root to install chromium" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
fi
chromium --version 2>/dev/null | grep -i chromium
