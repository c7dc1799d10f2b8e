#!/usr/bin/env bash
# Real clients against the sample on this transport, on Linux, on 127.0.0.1 only: curl over HTTP/2 with TLS
# (ALPN, a certificate made here with openssl) and with prior knowledge (h2c), h2load for a few seconds over
# both with no failed or errored request, and dotnet-counters (the local tool pinned in
# .config/dotnet-tools.json) reading the Transport.Winsock meter from the running sample: every instrument
# the README names must be there. Reuse is forced on with a deferred FIN, so that sockets recycle (through
# .NET's emulation) and the disconnect histogram has measurements too. Installs curl, openssl and
# nghttp2-client (h2load) with apt-get when missing. Prints one line, "clients: ok (...)", or fails.
# Expects the sample built (build/test.sh builds it first): CONFIGURATION (Release) picks the build.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
configuration="${CONFIGURATION:-Release}"
app="$root/samples/KestrelApp/bin/$configuration/net10.0/KestrelApp.dll"
work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
fail() { echo "clients: $*" >&2; [ -f "$work/sample.log" ] && tail -20 "$work/sample.log" >&2; exit 1; }

[ -f "$app" ] || fail "no $app: build the solution first"
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || fail "apt-get install ${missing[*]} failed"
fi
(cd "$root" && dotnet tool restore >/dev/null) || fail "dotnet tool restore failed (.config/dotnet-tools.json)"

openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/key.pem" -out "$work/cert.pem" -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" >/dev/null 2>&1 || fail "openssl could not make a certificate"

dotnet "$app" \
  --Kestrel:Endpoints:tls:Url=https://127.0.0.1:0 --Kestrel:Endpoints:tls:Protocols=Http1AndHttp2 \
  --Kestrel:Endpoints:tls:Certificate:Path="$work/cert.pem" --Kestrel:Endpoints:tls:Certificate:KeyPath="$work/key.pem" \
  --Kestrel:Endpoints:h2c:Url=http://127.0.0.1:0 --Kestrel:Endpoints:h2c:Protocols=Http2 \
  --urls http://127.0.0.1:0 \
  --Kestrel:Transport:Winsock:ReuseSockets=true --Kestrel:Transport:Winsock:DeferFinTimeout=00:00:01 \
  --Logging:LogLevel:Default=Warning --Logging:LogLevel:Microsoft.Hosting.Lifetime=Information >"$work/sample.log" 2>&1 &
pid=$!
tls="" h2c=""
for _ in $(seq 1 150); do
  tls=$(grep -o 'Now listening on: https://127.0.0.1:[0-9]*' "$work/sample.log" | head -1 | sed 's/Now listening on: //') || true
  h2c=$(grep -o 'Now listening on: http://127.0.0.1:[0-9]*' "$work/sample.log" | head -1 | sed 's/Now listening on: //') || true
  [ -n "$tls" ] && [ -n "$h2c" ] && break
  kill -0 "$pid" 2>/dev/null || fail "the sample exited while starting"
  sleep 0.2
done
[ -n "$tls" ] && [ -n "$h2c" ] || fail "the sample did not listen on both endpoints within 30 s"

# curl: HTTP/2 by ALPN over TLS, and by prior knowledge over cleartext.
got=$(curl -sk --http2 --max-time 10 -o "$work/body" -w '%{http_version} %{http_code}' "$tls/plaintext") || fail "curl --http2 $tls failed"
[ "$got" = "2 200" ] && [ "$(cat "$work/body")" = "Hello, World!" ] || fail "curl --http2 $tls: '$got'"
got=$(curl -s --http2-prior-knowledge --max-time 10 -o "$work/body" -w '%{http_version} %{http_code}' "$h2c/plaintext") || fail "curl --http2-prior-knowledge $h2c failed"
[ "$got" = "2 200" ] && [ "$(cat "$work/body")" = "Hello, World!" ] || fail "curl --http2-prior-knowledge $h2c: '$got'"

# /stats resolves the outbound connection factory, whose winsock.outbound.* instruments join the meter.
curl -sk --http1.1 --max-time 10 -o /dev/null "$tls/stats" || fail "curl $tls/stats failed"

# dotnet-counters watches the meter while h2load and a Connection: close churn run.
(cd "$root" && timeout 60 dotnet tool run dotnet-counters collect --process-id "$pid" --counters Transport.Winsock \
  --format json --duration 00:00:08 --refresh-interval 1 -o "$work/counters.json" >"$work/counters.log" 2>&1) &
counters=$!
sleep 1
# h2load: a few seconds on each endpoint, 10 connections, 10 streams each.
h2summary=()
for url in "$tls" "$h2c"; do
  out=$(timeout 30 h2load -D 2 -c 10 -m 10 "$url/plaintext" 2>&1) || { echo "$out" >&2; fail "h2load $url failed"; }
  line=$(grep '^requests:' <<<"$out") || fail "h2load $url printed no request summary: $out"
  read -r succeeded failed errored < <(awk '{for (i = 1; i <= NF; i++) {if ($(i+1) ~ /^succeeded/) s = $i; if ($(i+1) ~ /^failed/) f = $i; if ($(i+1) ~ /^errored/) e = $i}} END {print s + 0, f + 0, e + 0}' <<<"${line//,/}")
  [ "$failed" -eq 0 ] && [ "$errored" -eq 0 ] && [ "$succeeded" -gt 0 ] || fail "h2load $url: $line"
  h2summary+=("$succeeded")
done
for _ in $(seq 1 100); do curl -sk --http1.1 -H 'Connection: close' --max-time 10 -o /dev/null "$tls/plaintext" || fail "curl Connection: close churn failed"; done
wait "$counters" || { cat "$work/counters.log" >&2; fail "dotnet-counters collect failed"; }

# Every instrument the README's Metrics section names (tag keys, written "tag `winsock....`", are not instruments).
names=$(sed -n '/^### Metrics/,/^### /p' "$root/README.md" | grep -oP '(?<!tag )`winsock\.[a-z_.]*[a-z]`' | tr -d '`' | sort -u)
[ -n "$names" ] || fail "found no instrument names in README.md"
absent=()
for name in $names; do grep -q "\"name\": \"$name " "$work/counters.json" || absent+=("$name"); done
[ "${#absent[@]}" -eq 0 ] || fail "dotnet-counters saw no ${absent[*]} (it saw: $(grep -o '"name": "[^"(]*' "$work/counters.json" | sort -u | sed 's/"name": "//' | tr '\n' ' '))"

echo "clients: ok (curl HTTP/2 over TLS and h2c; h2load ${h2summary[0]} requests over TLS, ${h2summary[1]} over h2c, 0 failed; dotnet-counters read $(wc -w <<<"$names") instruments)"
