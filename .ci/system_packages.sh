#!/usr/bin/env bash
# System (apt) packages the test suite needs besides Python: Debian's Chromium and its WebDriver, for
# the explorer page's real-browser test (tests/test_explorer_browser.py; without them that test skips).
# Idempotent and quiet: installs only what is missing, prints one line. Run as root or with sudo.
set -euo pipefail
PACKAGES=(chromium chromium-driver)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" > /dev/null
fi
echo "[ci] system packages: $(chromedriver --version | head -n 1) (installed now: ${missing[*]:-none})"
