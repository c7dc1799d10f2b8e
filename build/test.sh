#!/usr/bin/env bash
# Restores, builds the whole solution with warnings as errors, runs the test suite (an xunit.v3
# executable) and ends with the totals alone on a line: "N passed, N failed, N skipped".
# Exits non-zero when the build fails or any test fails.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
configuration="${CONFIGURATION:-Release}"
results="$root/artifacts/test-results"
mkdir -p "$results"

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

if ! command -v dotnet >/dev/null 2>&1; then
  echo "test.sh: the .NET SDK (dotnet) is not on PATH; install the 10.0 SDK first." >&2
  exit 1
fi

echo "== restore"
dotnet restore Transport.sln
echo "== build ($configuration, warnings as errors)"
dotnet build Transport.sln --no-restore -c "$configuration" -warnaserror

echo "== tests (Linux, $(dotnet --version))"
report="$results/linux.xml"
rm -f "$report"
set +e
dotnet "test/Transport.Tests/bin/$configuration/net10.0/Transport.Tests.dll" -xml "$report" -noLogo "$@"
status=$?
set -e

# Totals from xunit's XML report; a missing report means the runner never got to run tests.
if [ ! -f "$report" ]; then
  echo "test.sh: no test report at $report (runner exit code $status)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
read -r total failed skipped errors < <(python3 - "$report" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
t = f = s = e = 0
for a in root.iter("assembly"):
    t += int(a.get("total", 0)); f += int(a.get("failed", 0))
    s += int(a.get("skipped", 0)); e += int(a.get("errors", 0))
errs = root.find("errors")
if errs is not None:
    e += len(errs.findall("error"))
print(t, f, s, e)
PY
)
passed=$((total - failed - skipped))
failed=$((failed + errors))
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed=1
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$total" -gt 0 ]
