#!/usr/bin/env bash
# The io_uring engine's measured variants against its defaults, side by side in one run (Linux, 127.0.0.1):
#   plain       plain descriptors, FIN by shutdown(2)                 (the defaults)
#   ring-fin    plain descriptors, FIN by IORING_OP_SHUTDOWN          (WINSOCK_IOURING_VARIANT=ring-fin)
#   registered  registered-file slots (IORING_FILE_INDEX_ALLOC), FIN by IORING_OP_SHUTDOWN
# Each round runs TransportBench's transport-only load and wrk's HTTP churn (Connection: close) against
# samples/KestrelApp for every variant, in a rotating order; the server's CPU per connection comes from
# /proc (io-wq worker threads included, they are the process's). Prints per-round rows, then medians and
# the minimum over rounds (on a shared machine the least disturbed round is the closest to the real cost),
# and ratios against plain. Bounded: ROUNDS (default 6) x 3 variants x 2 phases x (SECONDS_PER_RUN + a 4-5 s warm-up + start-up): about 14 minutes here.
#
#   bash benchmarks/iouring-variants.sh            # ROUNDS=6 SECONDS_PER_RUN=6 by default
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
rounds="${ROUNDS:-6}" seconds="${SECONDS_PER_RUN:-6}"
out="$root/artifacts/iouring-variants"
mkdir -p "$out"
results="$out/results.tsv"
die() { echo "iouring-variants: $*" >&2; exit 1; }

[ "$(uname -s)" = Linux ] || die "io_uring is Linux's"
command -v dotnet >/dev/null || die "the .NET SDK (dotnet) is not on PATH"
command -v wrk >/dev/null || die "wrk is missing (bash build/bench.sh installs it, or apt-get install wrk)"

dotnet build "$root/benchmarks/TransportBench" -c Release --artifacts-path "$out/build" -nologo -v quiet >"$out/build.txt" 2>&1 \
  || { tail -20 "$out/build.txt" >&2; die "building TransportBench failed"; }
dotnet build "$root/samples/KestrelApp" -c Release --artifacts-path "$out/build" -nologo -v quiet >>"$out/build.txt" 2>&1 \
  || { tail -20 "$out/build.txt" >&2; die "building KestrelApp failed"; }
tb="$out/build/bin/TransportBench/release/TransportBench.dll"
app="$out/build/bin/KestrelApp/release/KestrelApp.dll"

variant_env() { case "$1" in plain) echo "" ;; *) echo "$1" ;; esac; }

# http VARIANT: prints "requests cpu_us_per_conn errors" for one wrk churn run against the sample.
http() {
  local port="" pid t0 t1 line requests errors
  WINSOCK_IOURING_VARIANT="$(variant_env "$1")" dotnet "$app" --urls "http://127.0.0.1:0" \
    --Kestrel:Transport:Winsock:Engine=IoUring >"$out/app-$1.log" 2>&1 &
  pid=$!
  # The port the OS gave it, from Kestrel's "Now listening on" line.
  for _ in $(seq 200); do
    port=$(grep -o 'Now listening on: http://127.0.0.1:[0-9]*' "$out/app-$1.log" | grep -o '[0-9]*$' || true)
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || die "the sample exited for $1 (see $out/app-$1.log)"
    sleep 0.1
  done
  [ -n "$port" ] || { kill "$pid"; die "the sample did not start for $1 (see $out/app-$1.log)"; }
  timeout 20 wrk -t2 -c32 -d5s -H 'Connection: close' "http://127.0.0.1:$port/plaintext" >/dev/null 2>&1 || true
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  line=$(timeout $((seconds + 20)) wrk -t2 -c32 -d"${seconds}s" -H 'Connection: close' "http://127.0.0.1:$port/plaintext" 2>&1)
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  requests=$(awk '/requests in/ {print $1}' <<<"$line")
  errors=$({ grep -o 'Socket errors:.*' <<<"$line" || true; } | tr -cd '0-9 ' | awk '{print $1 + $2 + $3 + $4}')
  [ -n "$requests" ] || die "wrk printed no result against $1"
  awk -v r="$requests" -v a="$t0" -v b="$t1" -v e="${errors:-0}" -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%s %.1f %s\n", r, (b - a) * 1e6 / hz / r, e}'
}

printf 'round\tvariant\tphase\tconns\tcpu_us_per_conn\terrors\n' >"$results"
for round in $(seq "$rounds"); do
  case $((round % 3)) in
    1) order="plain ring-fin registered" ;;
    2) order="registered plain ring-fin" ;;
    0) order="ring-fin registered plain" ;;
  esac
  for v in $order; do
    line=$(WINSOCK_IOURING_VARIANT="$(variant_env "$v")" timeout $((seconds + 60)) dotnet "$tb" run --transport winsock \
      --engine iouring --seconds "$seconds" --warmup 4 --concurrency 32 2>"$out/tb-$v.txt" | grep '^transport=' | tail -1) \
      || die "TransportBench failed for $v (see $out/tb-$v.txt)"
    awk -v r="$round" -v v="$v" '{for (i = 1; i <= NF; i++) {split($i, kv, "="); f[kv[1]] = kv[2]}
      printf "%s\t%s\ttransport\t%s\t%s\t%s\n", r, v, f["conns"], f["cpu_us_per_conn"], f["errors"]}' <<<"$line" >>"$results"
    result=$(http "$v") || die "the HTTP run failed for $v"
    read -r requests cpu errors <<<"$result"
    printf '%s\t%s\thttp\t%s\t%s\t%s\n' "$round" "$v" "$requests" "$cpu" "$errors" >>"$results"
  done
  awk -F'\t' -v r="$round" '$1 == r {printf "round %s %-10s %-9s conns %-7s cpu_us_per_conn %-6s errors %s\n", $1, $2, $3, $4, $5, $6}' "$results"
done

echo
awk -F'\t' 'NR > 1 {k = $3 "\t" $2; v[k] = v[k] " " $5; if ($6 + 0 > 0) err[k] += $6}
  END {for (k in v) print k "\t" v[k] "\t" err[k] + 0}' "$results" | sort | while IFS=$'\t' read -r phase variant values errors; do
  stats=$(tr ' ' '\n' <<<"$values" | grep . | sort -g | awk '{a[NR] = $1} END {m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.1f %.1f", m, a[1]}')
  echo "$phase $variant $stats $errors"
done >"$out/summary.txt"
while read -r phase variant median min errors; do
  printf '%-9s %-10s median %-6s min %-6s errors %s\n' "$phase" "$variant" "$median" "$min" "$errors"
done <"$out/summary.txt"
for phase in transport http; do
  for v in ring-fin registered; do
    awk -v p="$phase" -v v="$v" '$1 == p && $2 == "plain" {m0 = $3; n0 = $4} $1 == p && $2 == v {m = $3; n = $4}
      END {printf "%s_%s_vs_plain_cpu: median %.2f min %.2f\n", p, v, m / m0, n / n0}' "$out/summary.txt"
  done
done
awk -F'\t' 'NR > 1 && $6 + 0 > 0 {bad = 1} END {exit bad}' "$results" || die "some runs had errors (see $results)"
