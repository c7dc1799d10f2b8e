#!/usr/bin/env bash
# Runs the repository's PowerShell scripts on Linux, so that neither rots between Windows runs:
#  - installs PowerShell (the PowerShell dotnet tool, pinned below) into artifacts/tools/pwsh, not globally;
#  - parses build/test.ps1 and build/windows-check.ps1 (PowerShell's own parser: any syntax error fails);
#  - runs build/test.ps1 for real, on its cheapest part: its restore, build and totals, with the suite cut
#    down to one test class (the whole suite already ran on Linux twice; a third time would add minutes);
#  - runs build/windows-check.ps1 -Quick: its portable parts (1,000 outbound requests with uploads, 300 listener
#    clients; the Windows-only part says "skipped: needs Windows (...)"), under 30 s here after the builds.
# Prints one line, "pwsh: ok (...)", or fails with what went wrong. Expects the solution built (build/test.sh
# builds it first): CONFIGURATION (Release) picks the build.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
version=7.6.10
tools="$root/artifacts/tools/pwsh"
work="$root/artifacts/pwsh-check"
mkdir -p "$work"
fail() { echo "pwsh: $*" >&2; exit 1; }

pwsh="$tools/pwsh"
if [ ! -x "$pwsh" ] || [ "$("$pwsh" -NoProfile -Command '$PSVersionTable.PSVersion.ToString()' 2>/dev/null)" != "$version" ]; then
  rm -rf "$tools"
  dotnet tool install --tool-path "$tools" PowerShell --version "$version" >"$work/install.log" 2>&1 \
    || { cat "$work/install.log" >&2; fail "dotnet tool install PowerShell $version failed"; }
fi

# PowerShell's parser on both scripts: nothing is run.
for script in build/test.ps1 build/windows-check.ps1; do
  errors=$("$pwsh" -NoProfile -Command "\$e = \$null; [void][System.Management.Automation.Language.Parser]::ParseFile('$root/$script', [ref]\$null, [ref]\$e); \$e | ForEach-Object { \"line \$(\$_.Extent.StartLineNumber): \$(\$_.Message)\" }") \
    || fail "could not parse $script"
  [ -z "$errors" ] || fail "$script does not parse: $errors"
done

# test.ps1 for real: restore, build (warnings as errors), one class of the suite, its totals line.
class=Transport.Tests.Options.OptionsValidationTests
timeout --kill-after=10s 600s "$pwsh" -NoProfile -File build/test.ps1 -class "$class" >"$work/test-ps1.log" 2>&1 \
  || { tail -20 "$work/test-ps1.log" >&2; fail "build/test.ps1 -class $class failed"; }
# Its report is named for Windows; keep it here, out of the Linux runs' test results.
mv -f artifacts/test-results/windows.xml "$work/test-ps1.xml" 2>/dev/null || true
test_totals=$(tail -1 "$work/test-ps1.log")
grep -Eq '^[1-9][0-9]* passed, 0 failed' <<<"$test_totals" || fail "build/test.ps1 ended '$test_totals'"

# windows-check.ps1 -Quick: the portable parts, bounded.
started=$(date +%s)
timeout --kill-after=10s 300s "$pwsh" -NoProfile -File build/windows-check.ps1 -Quick >"$work/windows-check.log" 2>&1 \
  || { tail -40 "$work/windows-check.log" >&2; fail "build/windows-check.ps1 -Quick failed (the report: artifacts/windows-check/report.md)"; }
check_totals=$(tail -1 "$work/windows-check.log")
took=$(($(date +%s) - started))
echo "pwsh: ok (PowerShell $version; test.ps1 and windows-check.ps1 parse; test.ps1 -class $class: $test_totals; windows-check.ps1 -Quick in $took s: ${check_totals#windows-check: })"
