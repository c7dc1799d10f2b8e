#!/usr/bin/env pwsh
# The Windows developer's build/test.sh: restores, builds with warnings as errors, runs the test suite
# natively on Windows (where socket reuse is real), and ends with "N passed, N failed, N skipped".
# Exits non-zero when the build fails or any test fails. Extra arguments go to the test runner.
$ErrorActionPreference = 'Stop'
Set-Location (Join-Path $PSScriptRoot '..')
$configuration = if ($env:CONFIGURATION) { $env:CONFIGURATION } else { 'Release' }
$env:DOTNET_CLI_TELEMETRY_OPTOUT = '1'
$env:DOTNET_NOLOGO = '1'

Write-Output '== restore'
dotnet restore Transport.sln
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
Write-Output "== build ($configuration, warnings as errors)"
dotnet build Transport.sln --no-restore -c $configuration -warnaserror
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }

Write-Output '== tests on Windows'
$results = Join-Path (Get-Location) 'artifacts/test-results'
New-Item -ItemType Directory -Force -Path $results | Out-Null
$report = Join-Path $results 'windows.xml'
Remove-Item $report -ErrorAction SilentlyContinue
& dotnet "test/Transport.Tests/bin/$configuration/net10.0/Transport.Tests.dll" -xml $report -noLogo -noColor @args
$status = $LASTEXITCODE

if (-not (Test-Path $report)) {
    Write-Output "test.ps1: no test report (runner exit code $status)"
    Write-Output '0 passed, 1 failed'
    exit 1
}

[xml]$xml = Get-Content $report
$total = 0; $failed = 0; $skipped = 0; $errors = 0
foreach ($assembly in $xml.assemblies.assembly) {
    $total += [int]$assembly.total
    $failed += [int]$assembly.failed
    $skipped += [int]$assembly.skipped
    $errors += [int]$assembly.errors
}
$passed = $total - $failed - $skipped
$failed += $errors
if ($status -ne 0 -and $failed -eq 0) { $failed = 1 }
if ($total -eq 0) { $failed += 1 }
Write-Output "$passed passed, $failed failed, $skipped skipped"
if ($failed -ne 0) { exit 1 }
