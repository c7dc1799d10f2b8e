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
# Bounded: a hung test fails the run instead of eating CI's time.
timeout --kill-after=30s "${TEST_TIMEOUT:-1200}s" \
  dotnet "test/Transport.Tests/bin/$configuration/net10.0/Transport.Tests.dll" -xml "$report" -noLogo -noColor "$@"
status=$?
set -e

# Totals from xunit's XML report; a missing report means the runner never got to run tests.
if [ ! -f "$report" ]; then
  echo "test.sh: no test report at $report (runner exit code $status)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
# One <assembly total=".." failed=".." skipped=".." errors=".."> element per test assembly.
attr() { grep -o "<assembly [^>]*" "$report" | grep -o " $1=\"[0-9]*\"" | grep -o '[0-9]*' | awk '{s+=$1} END {print s+0}'; }
total=$(attr total); failed=$(attr failed); skipped=$(attr skipped); errors=$(attr errors)
passed=$((total - failed - skipped))
failed=$((failed + errors))
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed=1
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$total" -gt 0 ]
