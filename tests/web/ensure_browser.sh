#!/bin/sh
# The web UI's browser tests drive Debian's Chromium (never a browser downloaded by a test
# tool). Install it, and its driver, when missing. Needs root (as on CI and dev machines).
set -eu
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
echo "ensure_browser: installing Debian's chromium and chromium-driver" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
/usr/bin/chromium --version
