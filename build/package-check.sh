#!/usr/bin/env bash
# Packs src/Transport.Winsock, installs the package from a local folder into a fresh host outside this
# repository (so none of its build settings apply), runs it on real Kestrel at 127.0.0.1:0 and serves a
# request through the transport. Prints one line, "package: ok (...)", or fails.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
configuration="${CONFIGURATION:-Release}"
packages="$root/artifacts/packages"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

rm -rf "$packages"
dotnet pack "$root/src/Transport.Winsock/Transport.Winsock.csproj" -c "$configuration" -o "$packages" -warnaserror -v quiet -nologo
nupkg=$(ls "$packages"/Transport.Winsock.*.nupkg | grep -v '\.snupkg$' | head -1)
version=$(basename "$nupkg" .nupkg | sed 's/^Transport\.Winsock\.//')
[ -f "$packages/Transport.Winsock.$version.snupkg" ] || { echo "package: no symbols package" >&2; exit 1; }

mkdir -p "$work/host"
cat > "$work/host/host.csproj" <<XML
<Project Sdk="Microsoft.NET.Sdk.Web">
  <PropertyGroup>
    <TargetFramework>net10.0</TargetFramework>
    <Nullable>enable</Nullable>
    <ImplicitUsings>enable</ImplicitUsings>
    <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="Transport.Winsock" Version="$version" />
  </ItemGroup>
</Project>
XML
cat > "$work/host/Program.cs" <<'CS'
using Transport.Winsock;

var builder = WebApplication.CreateBuilder(args);
builder.Logging.ClearProviders();
builder.WebHost.UseWinsockReuseTransport(options => options.PendingAccepts = 2);
builder.WebHost.UseUrls("http://127.0.0.1:0");
var app = builder.Build();
app.MapGet("/", () => "served by the installed package");
await app.StartAsync();

using var http = new HttpClient();
var body = await http.GetStringAsync(app.Urls.First());
var counters = app.Services.GetRequiredService<WinsockTransportCounters>();
Console.WriteLine($"{body}; accepted={counters.ConnectionsAccepted}; reuse: {counters.ReuseStatus}");
await app.StopAsync();
return body == "served by the installed package" && counters.ConnectionsAccepted == 1 ? 0 : 1;
CS
# Only the local folder: the package must carry everything it needs (the rest is the shared framework).
export NUGET_PACKAGES="$work/nuget"
dotnet restore "$work/host/host.csproj" --source "$packages" -v quiet -nologo
for file in lib/net10.0/Transport.Winsock.dll lib/net10.0/Transport.Winsock.xml README.md; do
  [ -f "$NUGET_PACKAGES/transport.winsock/$version/$file" ] || { echo "package: $file is missing from the package" >&2; exit 1; }
done
# The license is MIT, as an SPDX expression; no public repository exists yet, so the package names no
# URL (the SDK still records the commit it was built from, which is fine).
nuspec="$NUGET_PACKAGES/transport.winsock/$version/transport.winsock.nuspec"
grep -q '<license type="expression">MIT</license>' "$nuspec" || { echo "package: the .nuspec does not declare the MIT license" >&2; cat "$nuspec" >&2; exit 1; }
if grep -qE '<projectUrl|<repository[^>]* url=' "$nuspec"; then echo "package: the .nuspec names a repository or project URL, and none exists yet" >&2; exit 1; fi
out=$(timeout 120 dotnet run --project "$work/host/host.csproj" --no-restore -c Release 2>&1) || { echo "$out" >&2; echo "package: the installed package did not serve" >&2; exit 1; }
echo "package: ok (Transport.Winsock $version, license MIT, installed from a local folder: $(echo "$out" | tail -1))"
