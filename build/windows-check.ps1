#!/usr/bin/env pwsh
# What to run on the first real Windows machine (issue #20, "Ready for Windows"): builds
# benchmarks/WindowsCheck and runs it. It starts the sample app in a process of its own and checks
# (a) outbound churn: Connection: close requests, reuse forced on, some with 4 MiB uploads; connect times and
#     stalls of 1 s or more, refused and timed-out connects, sockets reused against created, ports kept;
# (b) listener clients that break the clean close: DisconnectEx error codes, reuse falling back or not;
# (c) Windows only: the bound address after a reuse disconnect against Socket.LocalEndPoint, a dual-mode
#     listener with IPv4 and IPv6 clients in turn on recycled sockets, AcceptEx into a socket recycled
#     from a connect. Elsewhere these say "skipped: needs Windows (why)".
# The report is Markdown, printed as it goes and kept in artifacts/windows-check/report.md: paste it into
# the issue. It ends "windows-check: N passed, N failed, N skipped"; the exit code is 1 when a check failed.
# Everything runs on 127.0.0.1 and ::1, bounded in count and time (the full run takes about a minute or two).
#   pwsh build/windows-check.ps1          the full run: 10,000 requests, 500 clean and 4 x 250 breaking clients
#   pwsh build/windows-check.ps1 -Quick   1,000 requests, 100 clean and 4 x 50 breaking clients (CI's run on Linux)
#   extra arguments go to the program (dotnet benchmarks/WindowsCheck/bin/Release/net10.0/WindowsCheck.dll --help)
param(
    [switch]$Quick,
    [Parameter(ValueFromRemainingArguments = $true)][string[]]$Rest = @()
)
$ErrorActionPreference = 'Stop'
Set-Location (Join-Path $PSScriptRoot '..')
$configuration = if ($env:CONFIGURATION) { $env:CONFIGURATION } else { 'Release' }
$env:DOTNET_CLI_TELEMETRY_OPTOUT = '1'
$env:DOTNET_NOLOGO = '1'

Write-Output "== build benchmarks/WindowsCheck ($configuration, warnings as errors)"
dotnet build benchmarks/WindowsCheck/WindowsCheck.csproj -c $configuration -warnaserror -v quiet -nologo
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }

$out = Join-Path (Get-Location) 'artifacts/windows-check'
New-Item -ItemType Directory -Force -Path $out | Out-Null
$report = Join-Path $out 'report.md'
Remove-Item $report -ErrorAction SilentlyContinue

$label = 'commit unknown'
$commit = git rev-parse --short HEAD 2>$null
if ($LASTEXITCODE -eq 0 -and $commit) {
    $dirty = git status --porcelain --untracked-files=no 2>$null
    $label = "commit $commit$(if ($dirty) { ', with local changes' })"
}

$arguments = @('--label', $label, '--report', $report)
if ($Quick) { $arguments += '--quick' }
$arguments += $Rest

Write-Output "== run (the report is also kept in $report)"
& dotnet "benchmarks/WindowsCheck/bin/$configuration/net10.0/WindowsCheck.dll" @arguments
$status = $LASTEXITCODE
if (-not (Test-Path $report)) {
    Write-Output "windows-check.ps1: the program ended without a report (exit code $status)"
    exit 1
}
exit $status
