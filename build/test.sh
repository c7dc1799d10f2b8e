#!/usr/bin/env bash
# Runs the whole test suite three times: natively on Linux on the default engine (io_uring where it can
# run) and again on the sockets engine, then on the Windows API under Wine (the
# suite and the sample app published for win-x64, self-contained), checks that the NuGet package
# installs into a fresh host and serves (build/package-check.sh), runs real clients against the
# sample (build/clients-check.sh: curl and h2load over HTTP/2, dotnet-counters), and runs the PowerShell
# scripts (build/pwsh-check.sh: PowerShell as a local dotnet tool, windows-check.ps1 -Quick, test.ps1 parsed
# and run on one test class). Installs wine64 (and curl) with
# apt-get when missing. Ends with the combined totals alone on a line: "N passed, N failed, N skipped".
# Exits non-zero when the build fails or any test fails on either side.
#   WINE=0 build/test.sh       skip the Wine stage (a quick local loop; CI always runs it)
#   build/test.sh -class X     extra arguments go to the test runner on both sides
#   TRANSPORT_SOAK=1 build/test.sh   also run the soak (test/Transport.Tests/Soak) on Linux; CI=true does too
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
configuration="${CONFIGURATION:-Release}"
artifacts="$root/artifacts"
results="$artifacts/test-results"
mkdir -p "$results"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

if ! command -v dotnet >/dev/null 2>&1; then
  echo "test.sh: the .NET SDK (dotnet) is not on PATH; install the 10.0 SDK first." >&2
  exit 1
fi

total_passed=0 total_failed=0 total_skipped=0
summary=()

# Sums one attribute over the <assembly> elements of an xunit XML report.
attr() { grep -o "<assembly [^>]*" "$1" | grep -o " $2=\"[0-9]*\"" | grep -o '[0-9]*' | awk '{s+=$1} END {print s+0}'; }

# record LABEL REPORT RUNNER_EXIT: adds a run's totals; a missing report counts as a failure.
record() {
  local label=$1 report=$2 status=$3
  if [ ! -f "$report" ]; then
    echo "test.sh: $label: no test report (runner exit code $status)" >&2
    summary+=("$label: no report, runner exit code $status")
    total_failed=$((total_failed + 1))
    return
  fi
  local total failed skipped errors passed
  total=$(attr "$report" total); failed=$(attr "$report" failed)
  skipped=$(attr "$report" skipped); errors=$(attr "$report" errors)
  passed=$((total - failed - skipped)); failed=$((failed + errors))
  if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
  if [ "$total" -eq 0 ]; then failed=$((failed + 1)); fi
  summary+=("$label: $passed passed, $failed failed, $skipped skipped")
  # The names of the failed tests go in the totals too, so that the last lines of a run say what failed.
  # Each with the first 400 characters of its failure message (perl is in every Debian: perl-base).
  local line
  while IFS= read -r line; do
    [ -n "$line" ] && summary+=("  $line")
  done < <(perl -0777 -ne '
    while (/<test ([^>]*result="Fail"[^>]*)>(.*?)<\/test>/gs) {
      my ($attrs, $body) = ($1, $2);
      my ($name) = $attrs =~ /(?:^|\s)name="([^"]*)"/;
      my ($message) = $body =~ /<message><!\[CDATA\[(.*?)\]\]><\/message>/s;
      for ($name, $message) { next unless defined; s/\\?&quot;/"/g; s/&lt;/</g; s/&gt;/>/g; s/&amp;/&/g; s/\s+/ /g; }
      print "failed: $name\n";
      print "    ", substr($message, 0, 400), "\n" if defined $message;
    }' "$report" | head -40 || true)
  total_passed=$((total_passed + passed)); total_failed=$((total_failed + failed)); total_skipped=$((total_skipped + skipped))
}

# Skipped tests of a report, grouped by reason.
skip_reasons() {
  tr '\n' ' ' < "$1" | grep -o '<reason><!\[CDATA\[[^]]*' | sed 's/<reason><!\[CDATA\[//' | sort | uniq -c | sed 's/^/    /' || true
}

echo "== restore"
dotnet restore Transport.sln
echo "== build ($configuration, warnings as errors)"
dotnet build Transport.sln --no-restore -c "$configuration" -warnaserror

echo "== tests on Linux ($(dotnet --version))"
report="$results/linux.xml"
rm -f "$report"
# The soak (100,000+ requests, 5,000 connections at once) runs on Linux alone: in CI, or when asked for.
soak=0
if [ "${CI:-}" = "true" ] || [ "${TRANSPORT_SOAK:-}" = "1" ]; then soak=1; fi
soak_report="$results/soak.txt"
rm -f "$soak_report"
set +e
# Bounded: a hung test fails the run instead of eating CI's time.
TRANSPORT_SOAK=$soak TRANSPORT_SOAK_REPORT="$soak_report" timeout --kill-after=30s "${TEST_TIMEOUT:-1200}s" \
  dotnet "test/Transport.Tests/bin/$configuration/net10.0/Transport.Tests.dll" -xml "$report" -noLogo -noColor "$@"
status=$?
set -e
record "Linux" "$report" "$status"
if [ -f "$soak_report" ]; then sed 's/^/  /' "$soak_report"; fi

# The same suite on the sockets engine: on Linux the default (Auto) is io_uring where it can run, and
# every host the tests build binds its options from configuration, so this one variable moves them all.
echo "== tests on Linux, sockets engine (Kestrel__Transport__Winsock__Engine=Sockets)"
report="$results/linux-sockets.xml"
rm -f "$report"
set +e
Kestrel__Transport__Winsock__Engine=Sockets timeout --kill-after=30s "${TEST_TIMEOUT:-1200}s" \
  dotnet "test/Transport.Tests/bin/$configuration/net10.0/Transport.Tests.dll" -xml "$report" -noLogo -noColor "$@"
status=$?
set -e
record "Linux (sockets engine)" "$report" "$status"

# check LABEL SCRIPT PASSED: runs build/SCRIPT; prints its last line when it passes, the tail of its
# output when it fails, and adds "LABEL: PASSED" or "LABEL: FAILED" to the totals.
check() {
  local label=$1 script=$2 passed=$3 out
  if out=$(bash "$root/build/$script" 2>&1 | tail -20); then
    echo "  $(tail -1 <<<"$out")"
    summary+=("$label: $passed")
  else
    sed 's/^/    /' <<<"$out"
    summary+=("$label: FAILED")
    total_failed=$((total_failed + 1))
  fi
}

echo "== the NuGet package, installed into a fresh host"
check Package package-check.sh "installs and serves"
echo "== real clients against the sample: curl and h2load over HTTP/2, dotnet-counters on its meter"
check Clients clients-check.sh "curl, h2load and dotnet-counters"
echo "== the PowerShell scripts on Linux: windows-check.ps1 -Quick (its portable parts), test.ps1 parsed and run on one class"
check PowerShell pwsh-check.sh "windows-check.ps1 -Quick and test.ps1 ran"

if [ "${WINE:-1}" != "0" ]; then
  wine_dir="$artifacts/wine"
  wine="/usr/lib/wine/wine64"
  if [ ! -x "$wine" ] || ! command -v curl >/dev/null 2>&1; then
    echo "== installing wine64 and curl (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wine64 curl >/dev/null
  fi

  echo "== publishing the suite and the sample for win-x64 (self-contained)"
  rm -rf "$wine_dir"
  dotnet publish test/Transport.Tests/Transport.Tests.csproj -c "$configuration" -r win-x64 --self-contained -warnaserror -o "$wine_dir/tests" -v quiet -nologo
  dotnet publish samples/KestrelApp/KestrelApp.csproj -c "$configuration" -r win-x64 --self-contained -warnaserror -o "$wine_dir/sample" -v quiet -nologo

  # A fresh prefix each run; W^X off, or the CLR under Wine crashes under connection churn.
  export WINEPREFIX="$wine_dir/prefix" WINEDEBUG=-all DOTNET_EnableWriteXorExecute=0 WINEDLLOVERRIDES="mshtml="
  timeout 180s "$wine" wineboot -i >/dev/null 2>&1 || true

  echo "== tests on the Windows API under Wine ($("$wine" --version 2>/dev/null || echo wine))"
  report="$results/wine.xml"
  # wine_tests LOG: one run of the suite under Wine, its output also in LOG. The CLR under Wine 8 now and
  # then dies in a garbage collection ("Fatal error. SuspendThread failed with error 5": Wine could not
  # suspend a thread) and the dying process then hangs; a watcher ends it at once instead of at the
  # time limit, and the caller runs the suite once more, saying so.
  wine_tests() {
    local log=$1
    shift
    rm -f "$wine_dir/tests/wine.xml" "$log"
    # timeout leads a process group of its own: the watcher ends the whole group, and nothing else.
    (cd "$wine_dir/tests" && exec timeout --kill-after=30s "${TEST_TIMEOUT:-1200}s" \
      "$wine" Transport.Tests.exe -xml wine.xml -noLogo -noColor "$@") >"$log" 2>&1 &
    local runner=$!
    while kill -0 "$runner" 2>/dev/null; do
      if grep -q '^Fatal error\.' "$log" 2>/dev/null; then
        sleep 5
        kill -TERM -- "-$runner" 2>/dev/null || true
        sleep 2
        kill -KILL -- "-$runner" 2>/dev/null || true
        break
      fi
      sleep 1
    done
    local status=0
    wait "$runner" || status=$?
    cat "$log"
    return "$status"
  }
  wine_log="$results/wine.log"
  set +e
  wine_tests "$wine_log" "$@"
  status=$?
  wine_note=""
  if grep -q '^Fatal error\.' "$wine_log"; then
    wine_note=" (the CLR crashed under Wine in the first run: $(grep -A1 '^Fatal error\.' "$wine_log" | tail -1 | cut -c1-80); run again)"
    echo "== the CLR crashed under Wine; the suite runs under Wine once more"
    /usr/lib/wine/wineserver64 -k 2>/dev/null || true
    wine_tests "$wine_log" "$@"
    status=$?
  fi
  set -e
  rm -f "$report"
  [ -f "$wine_dir/tests/wine.xml" ] && cp "$wine_dir/tests/wine.xml" "$report"
  record "Wine" "$report" "$status"
  [ -z "$wine_note" ] || summary[${#summary[@]}-1]+="$wine_note"
  if [ -f "$report" ]; then
    echo "  skipped under Wine, by reason:"
    skip_reasons "$report"
  fi

  echo "== the sample app under Wine, answering curl from Linux"
  log="$wine_dir/sample.log"
  (cd "$wine_dir/sample" && exec "$wine" KestrelApp.exe --urls http://127.0.0.1:0 >"$log" 2>&1) &
  sample_pid=$!
  url=""
  for _ in $(seq 1 120); do
    url=$(grep -o 'Now listening on: http://127.0.0.1:[0-9]*' "$log" 2>/dev/null | head -1 | sed 's/Now listening on: //') || true
    [ -n "$url" ] && break
    sleep 0.5
  done
  sample_ok=1
  if [ -z "$url" ]; then
    echo "  the sample did not start under Wine:"; sed 's/^/    /' "$log" | tail -20
    sample_ok=0
  else
    body=$(curl -s --max-time 10 "$url/plaintext" || true)
    failures=0
    for _ in $(seq 1 200); do
      curl -s --max-time 10 -H 'Connection: close' "$url/plaintext" >/dev/null || failures=$((failures + 1))
    done
    stats=$(curl -s --max-time 10 "$url/stats" || true)
    echo "  $url/plaintext -> '$body'; 200 Connection: close requests, $failures failed"
    echo "  $url/stats -> $stats"
    if [ "$body" != "Hello, World!" ] || [ "$failures" -ne 0 ] || ! grep -q '"connectionsAccepted":20[2-9]' <<<"$stats"; then
      sample_ok=0
    fi
  fi
  kill "$sample_pid" 2>/dev/null || true
  /usr/lib/wine/wineserver64 -k 2>/dev/null || true
  wait "$sample_pid" 2>/dev/null || true
  if [ "$sample_ok" -eq 1 ]; then
    summary+=("Wine sample: served curl")
  else
    summary+=("Wine sample: FAILED")
    total_failed=$((total_failed + 1))
  fi
fi

echo "== totals"
printf '  %s\n' "${summary[@]}"
echo "$total_passed passed, $total_failed failed, $total_skipped skipped"
[ "$total_failed" -eq 0 ]
