#!/usr/bin/env bash
# Chromium for the report's browser test (tests/reliability/test_report_browser.py):
# Debian's chromium package, installed only when /usr/bin/chromium is missing and apt-get
# can run as root; otherwise nothing (the test then skips, saying why). Playwright drives
# it (the dev extra); `playwright install` is never needed.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[browser] installing Debian's chromium for the report's browser test"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "[browser] no /usr/bin/chromium and no root apt-get: the report's browser test will skip"
fi
