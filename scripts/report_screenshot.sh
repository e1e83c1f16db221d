#!/usr/bin/env bash
# Render a run's report.html in headless Chromium to a PNG and check that the page made no
# network request (Chromium's net log must show no http(s)/ws request made by the page).
# Usage: scripts/report_screenshot.sh REPORT.html OUT.png
set -euo pipefail
report=$(realpath "$1"); shot=$(realpath -m "$2")
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "chromium not found; install Debian's chromium package" >&2; exit 3; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --disable-quic --user-data-dir="$tmp/profile" \
  --log-net-log="$tmp/net.json" --window-size=1100,5200 --screenshot="$shot" "file://$report" >/dev/null 2>&1
[ -s "$shot" ] || { echo "no screenshot written" >&2; exit 1; }
# Chromium itself phones home (time sync, accounts) with initiator "not an origin"; any other
# http(s)/ws request came from the page.
python3 - "$tmp/net.json" <<'PY' || { echo "the page made network requests (above)" >&2; exit 1; }
import json, sys
events = json.load(open(sys.argv[1]))["events"]
page = sorted({e["params"]["url"] for e in events
               if "url" in e.get("params", {}) and "initiator" in e["params"]
               and e["params"]["initiator"] != "not an origin"
               and e["params"]["url"].split(":", 1)[0] in ("http", "https", "ws", "wss")})
if page:
    print("\n".join(page))
sys.exit(1 if page else 0)
PY
echo "screenshot: $shot (no network requests)"
