#!/usr/bin/env bash
# Side-by-side benchmark of this transport (--transport winsock) against Kestrel's own Sockets transport
# (--transport sockets) and against a floor (benchmarks/floor/floor.c, a single-threaded C epoll server
# built here with gcc), on 127.0.0.1 only, in one bounded run:
#   1. HTTP: builds samples/KestrelApp (Release) and, round after round, starts a fresh server per
#      configuration on a port of its own, even rounds in the reverse order (A B ... B A):
#        winsock           ours with its defaults (on Linux: the io_uring engine where it can run)
#        winsock-sockets   ours on the sockets engine (Engine=Sockets: the fallback)
#        sockets           Kestrel's Sockets transport
#        winsock-inline    ours with UnsafePreferInlineScheduling (churn only)
#        winsock+deferFIN  ours with a deferred FIN (churn only)
#        floor             the C server (churn only)
#      and measures with wrk:
#        churn      /plaintext with "Connection: close" (one TCP connection per request): req/s, p50, p99,
#                   errors (socket errors + non-2xx), and from the server: bytes allocated per connection
#                   (GC delta / connections, from /stats; Kestrel's HTTP layer included, the same on both),
#                   CPU µs per connection (utime+stime from /proc/<pid>/stat), server-side TIME_WAIT sockets
#                   (local port = the server's) right after the phase, the process's peak working set, and
#                   the client's (wrk's) CPU µs per connection: on loopback each side's kernel work for the
#                   other's FIN lands partly in its own system calls, so a deferred FIN moves CPU from
#                   the client to the server without adding any
#        keep-alive /plaintext over persistent connections: req/s (not for the deferred-FIN server)
#      Deferred FIN (--Kestrel:Transport:Winsock:DeferFinTimeout) makes the server wait for the client's
#      FIN first, so TIME_WAIT lands on the client.
#   2. Transport only: builds benchmarks/TransportBench (Release) and alternates its "run" mode between
#      winsock, winsock-sockets and sockets, and its "client" mode against the floor's transport protocol:
#      connections/s, bytes allocated and CPU µs per connection, without HTTP.
#   3. Outbound: the same TransportBench's "outbound" mode, HttpClient churning (Connection: close) against
#      the sample on Kestrel's Sockets transport, alternating the default SocketsHttpHandler and ours
#      (WinsockReuse.CreateConnectCallback with a 2 s client-side deferred FIN): requests/s, the client's
#      CPU µs per request, and the client TIME_WAIT entries per request the run left (/proc/net/tcp).
#   4. HTTPS (full runs, or when PHASES names it): the sample over TLS (one ECDSA P-256 certificate made
#      for the run with openssl) on ours (https-winsock) and on Kestrel's Sockets transport (https-sockets),
#      and benchmarks/floor/tls_floor.c (https-floor: epoll, nonblocking SSL_accept, one SSL_CTX, OpenSSL's
#      defaults) against benchmarks/floor/tls_client.c (16 blocking loops, TLS 1.3, Connection: close):
#      first every connection a full handshake, then each loop offering the ticket its last connection
#      got (resumed; a note says when the server did not take them). The server's CPU µs per connection.
#      Builds both with gcc against libssl-dev (installed when missing).
#   5. Idle scale: the same TransportBench's "idle" mode against the sample, a fresh server each, in
#      alternating order (A B C, then C B A): idle-winsock (ours, defaults: io_uring), idle-winsock-sockets
#      (ours, Engine=Sockets) and idle-sockets (Kestrel's Sockets transport). The client warms the server
#      up (300 requests on a throwaway connection), reads its VmRSS (/proc/<pid>/status) and GC heap
#      (/stats), opens IDLE_CONNECTIONS keep-alive connections (128 at a time, 5,000 per source address
#      from 127.0.0.2 up), sends one GET /plaintext on each and holds them idle; 2 s later it reads both
#      again: memory per held connection = (VmRSS held - VmRSS before) / N (and the same for the GC heap).
#      Then IDLE_REQUESTS sequential requests on one more connection, 10 ms apart (so they span seconds
#      and meet the server's periodic work over every connection: Kestrel's 1 s heartbeat), each timed from
#      its write to the end of its response: the slowest, p99 and p50. Holding N connections takes N
#      descriptors in the server and in the client: bench.sh raises `ulimit -n` to the hard limit for both
#      (20,000 per process on the bench machine) and fails at once if that is below N + 1000.
# Prints a table per round, a summary of medians, writes artifacts/bench/results.tsv (every measurement)
# and artifacts/bench/summary.tsv (medians), and ends with these lines: six of median(winsock)/median(sockets),
#   churn_ratio= keepalive_ratio= cpu_per_conn_ratio= transport_conn_ratio= alloc_per_conn_ratio=
#   time_wait_ratio= (this one: winsock with deferred FIN on against sockets)
# then two of winsock with deferred FIN on against winsock without it (what the deferred FIN costs):
#   deferfin_churn_ratio= deferfin_cpu_ratio= (server CPU per connection)
# then four more: transport_cpu_ratio= (transport-only CPU per connection, winsock/sockets),
#   inline_cpu_ratio= (HTTP churn CPU per connection, winsock-inline/sockets), floor_cpu_ratio=
#   (transport-only CPU per connection, winsock/floor), sockets_engine_cpu_ratio= (HTTP churn CPU per
#   connection, winsock-sockets/sockets), and two of the outbound phase, ours/the default handler:
#   outbound_churn_ratio= (requests/s) and outbound_time_wait_ratio= (client TIME_WAIT per request),
#   then three of the idle phase, idle-winsock/idle-sockets: idle_memory_ratio= (RSS per held connection),
#   idle_max_latency_ratio= (the slowest timed request) and idle_p99_latency_ratio=, and the same three for
#   ours on the sockets engine (idle-winsock-sockets/idle-sockets): idle_sockets_engine_memory_ratio=,
#   idle_sockets_engine_max_latency_ratio=, idle_sockets_engine_p99_latency_ratio=; last, the outbound
#   phase's client CPU per request, ours/the default handler: outbound_cpu_ratio=; and, in full runs only,
#   ours with WinsockOutboundOptions.Engine = Sockets (.NET's sockets, as on Windows) against the default
#   handler: outbound_sockets_engine_churn_ratio= and outbound_sockets_engine_cpu_ratio= (n/a in quick runs);
#   then the HTTPS phase's server CPU per connection: https_churn_cpu_ratio= (ours/Kestrel, full
#   handshakes), https_floor_cpu_ratio= (ours/the TLS floor) and https_resumed_cpu_ratio= (ours/Kestrel,
#   resumed connections), n/a in quick runs unless PHASES names https.
#   Draws artifacts/bench/cpu_per_conn.svg (gnuplot) of the medians.
# results.tsv's idle rows: conns = connections held, requests = timed requests that succeeded, p50_ms and
#   p99_ms of those, alloc_per_conn = the server's RSS per held connection (bytes), peak_ws_mib its VmHWM;
#   the last two columns are the idle rows' alone: max_ms (the slowest timed request) and gc_heap_per_conn
#   (the server's GC heap per held connection, bytes; garbage not yet collected included).
# Any failed phase stops the run with a non-zero exit and no ratios; without benchmarks/TransportBench
# the ratios of the phases that need it (transport-only, outbound, idle) read n/a and the run exits 3.
# Installs wrk, gcc and gnuplot (and curl, ss) with apt-get when missing (root, or sudo).
#
#   build/bench.sh                 full run: 4 rounds of 10 s phases (HTTPS: 2 of 6 s), 15,000 idle connections, under 23 minutes
#   build/bench.sh --quick         or QUICK=1: 2 rounds of 3-4 s phases, 4,000 idle connections, under 6 minutes
#   PHASES=idle build/bench.sh     only the phases named (http, transport, outbound, https, idle; comma-separated;
#                                  quick runs leave https out unless it is named);
#                                  the others' lines read n/a
# Overrides (environment): ROUNDS, CHURN_SECONDS, KEEPALIVE_SECONDS, WARMUP_SECONDS, WRK_THREADS,
#   WRK_CONNECTIONS, DEFER_FIN_TIMEOUT (00:00:00.500), TB_SECONDS, TB_WARMUP, TB_CONCURRENCY, PORT_BASE
#   (first port tried, 18100), IDLE_CONNECTIONS (15000, quick 4000), IDLE_REQUESTS (500), IDLE_ROUNDS
#   (ROUNDS), HTTPS_ROUNDS (2, quick ROUNDS), HTTPS_SECONDS (6, quick 3), HTTPS_WARMUP (8, quick 2),
#   PHASES (all five; quick: not https),
#   TIME_LIMIT (seconds the whole run may take: 1440, quick 360),
#   SKIP_TRANSPORT_BENCH=1 (no TransportBench: no transport-only, outbound or idle phase; their ratios
#   print n/a).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

quick="${QUICK:-0}"
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument '$arg' (--quick, --help)" >&2; exit 2 ;;
  esac
done
if [ "$quick" = 1 ]; then
  rounds="${ROUNDS:-2}" churn_s="${CHURN_SECONDS:-4}" keepalive_s="${KEEPALIVE_SECONDS:-3}" warmup_s="${WARMUP_SECONDS:-2}"
  tb_s="${TB_SECONDS:-3}" tb_warmup="${TB_WARMUP:-1}" time_limit="${TIME_LIMIT:-360}"
  idle_conns="${IDLE_CONNECTIONS:-4000}" https_s="${HTTPS_SECONDS:-3}" https_warmup="${HTTPS_WARMUP:-2}"
  https_rounds="${HTTPS_ROUNDS:-$rounds}"
  # The HTTPS phase only when PHASES names it: with it a quick run would not stay under 6 minutes.
  default_phases="http,transport,outbound,idle"
else
  rounds="${ROUNDS:-4}" churn_s="${CHURN_SECONDS:-10}" keepalive_s="${KEEPALIVE_SECONDS:-10}" warmup_s="${WARMUP_SECONDS:-5}"
  tb_s="${TB_SECONDS:-10}" tb_warmup="${TB_WARMUP:-4}" time_limit="${TIME_LIMIT:-1440}"
  # HTTPS: 2 rounds of their own (HTTPS_ROUNDS), so that the full run stays under 25 minutes; 8 s of
  # warm-up, as a profile 5-11 s after the server's start still found the JIT in 12-15 % of its samples.
  idle_conns="${IDLE_CONNECTIONS:-15000}" https_s="${HTTPS_SECONDS:-6}" https_warmup="${HTTPS_WARMUP:-8}"
  https_rounds="${HTTPS_ROUNDS:-2}"
  default_phases="http,transport,outbound,https,idle"
fi
wrk_threads="${WRK_THREADS:-2}" wrk_conns="${WRK_CONNECTIONS:-32}"
defer_fin="${DEFER_FIN_TIMEOUT:-00:00:00.500}"
tb_conc="${TB_CONCURRENCY:-32}"
next_port="${PORT_BASE:-18100}"
skip_tb="${SKIP_TRANSPORT_BENCH:-0}"
idle_requests="${IDLE_REQUESTS:-500}" idle_rounds="${IDLE_ROUNDS:-$rounds}"
phases="${PHASES:-$default_phases}"
for phase in ${phases//,/ }; do
  case "$phase" in
    http|transport|outbound|https|idle) ;;
    *) echo "bench.sh: PHASES: unknown phase '$phase' (http, transport, outbound, https, idle)" >&2; exit 2 ;;
  esac
done
# want PHASE: whether PHASES names it; on PHASE: the same as 1 or 0, for the estimate.
want() { [[ ",${phases// /,}," == *",$1,"* ]]; }
on() { if want "$1"; then echo 1; else echo 0; fi; }
# The idle phase's descriptors: the hard limit (or the kernel's cap where it reads unlimited).
nofile_limit=$(ulimit -Hn)
if [ "$nofile_limit" = unlimited ]; then nofile_limit=$(cat /proc/sys/fs/nr_open); fi

out="$root/artifacts/bench"
build_dir="$out/build"
logs="$out/logs"
results="$out/results.tsv"
summary="$out/summary.tsv"
app_dll="$build_dir/bin/KestrelApp/release/KestrelApp.dll"
tb_project="$root/benchmarks/TransportBench"
tb_dll="$build_dir/bin/TransportBench/release/TransportBench.dll"
floor_src="$root/benchmarks/floor/floor.c"
floor_bin="$build_dir/floor"
tls_floor_src="$root/benchmarks/floor/tls_floor.c"
tls_floor_bin="$build_dir/tls_floor"
tls_client_src="$root/benchmarks/floor/tls_client.c"
tls_client_bin="$build_dir/tls_client"
https_dir="$build_dir/https"
clk_tck="$(getconf CLK_TCK)"
server_pid="" server_port="" server_log="" server_nofile=""

die() { echo "bench.sh: error: $*" >&2; exit 1; }
note() { echo "bench.sh: $*" >&2; }

# Kills the server still running, if any (on every exit, including errors and Ctrl-C).
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Fails the run when the next step (about $1 seconds) would end past the time limit.
budget() {
  local need=$1
  if [ $((SECONDS + need)) -gt "$time_limit" ]; then
    die "time limit: ${SECONDS}s spent, the next step needs ~${need}s more, over TIME_LIMIT=${time_limit}s"
  fi
}

# ensure_tool COMMAND PACKAGE: installs the Debian package when the command is missing.
ensure_tool() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "$cmd is missing; install the Debian package '$pkg' (needs root or sudo)"
    sudo="sudo"
  fi
  note "installing $pkg (apt-get)"
  $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq "$pkg" >&2 || die "apt-get install $pkg failed"
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing $pkg"
}

# ensure_package PACKAGE: installs the Debian package (a library's headers: no command to look for).
ensure_package() {
  local pkg=$1 sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "the Debian package '$pkg' is missing (needs root or sudo to install)"
    sudo="sudo"
  fi
  note "installing $pkg (apt-get)"
  $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq "$pkg" >&2 || die "apt-get install $pkg failed"
}

machine() {
  echo "== machine"
  echo "nproc:   $(nproc)"
  echo "cpu:     $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "kernel:  $(uname -srm)"
  echo "dotnet:  $(dotnet --version)"
  echo "wrk:     $(wrk -v 2>&1 | head -1)"
  echo "ports:   ephemeral $(tr '\t' '-' < /proc/sys/net/ipv4/ip_local_port_range), tcp_tw_reuse=$(cat /proc/sys/net/ipv4/tcp_tw_reuse)"
  echo "fds:     hard limit $(ulimit -Hn) per process (soft $(ulimit -Sn)); the idle phase's servers and client run at $nofile_limit"
  echo "run:     $([ "$quick" = 1 ] && echo quick || echo full): $rounds rounds, warmup ${warmup_s}s, churn ${churn_s}s, keep-alive ${keepalive_s}s, wrk -t$wrk_threads -c$wrk_conns, deferred FIN $defer_fin; transport-only ${tb_s}s (+${tb_warmup}s warmup) x$tb_conc; idle $idle_conns connections, $idle_requests timed requests, $idle_rounds rounds; limit ${time_limit}s"
  echo "phases:  ${phases//,/ }"
}

# Sets server_port to a port nothing uses, in any TCP state (old TIME_WAIT included), from PORT_BASE upwards.
pick_port() {
  local p=$next_port
  while [ -n "$(ss -Htan "( sport = :$p or dport = :$p )")" ]; do p=$((p + 1)); done
  next_port=$((p + 1))
  server_port=$p
}

# start_server LABEL TRANSPORT [ARGS...]: a fresh sample app on its own port; waits until /stats answers.
# With server_nofile set, the server's soft descriptor limit is raised to it (in the subshell that then
# becomes the server, so server_pid is the server's own pid). With server_scheme=https, over TLS with the
# run's certificate.
start_server() {
  local label=$1 transport=$2; shift 2
  local scheme=${server_scheme:-http} tls=()
  if [ "$scheme" = https ]; then
    tls=(--Kestrel:Certificates:Default:Path="$https_dir/cert.pem" --Kestrel:Certificates:Default:KeyPath="$https_dir/key.pem")
  fi
  pick_port
  server_log="$logs/${label}-r${round}-${server_port}.log"
  # Logging at Warning whatever appsettings.json says: a log line per request would be what gets measured.
  ( if [ -n "$server_nofile" ]; then ulimit -n "$server_nofile"; fi
    exec dotnet "$app_dll" --transport "$transport" --urls "$scheme://127.0.0.1:$server_port" \
      --Logging:LogLevel:Default=Warning "${tls[@]}" "$@" ) >"$server_log" 2>&1 &
  server_pid=$!
  local i
  for i in $(seq 1 150); do
    if curl -sfk --max-time 2 -o /dev/null "$scheme://127.0.0.1:$server_port/stats"; then return 0; fi
    kill -0 "$server_pid" 2>/dev/null || { head -20 "$server_log" >&2; die "$label: the server exited while starting (log: $server_log)"; }
    sleep 0.2
  done
  head -20 "$server_log" >&2
  die "$label: the server did not answer $scheme://127.0.0.1:$server_port/stats within 30 s"
}

# start_floor LABEL MODE: the C floor server (http or transport) on a port of its own; with MODE tls, the
# TLS floor with the run's certificate.
start_floor() {
  local label=$1 mode=$2
  pick_port
  server_log="$logs/${label}-r${round}-${server_port}.log"
  if [ "$mode" = tls ]; then
    "$tls_floor_bin" "$server_port" "$https_dir/cert.pem" "$https_dir/key.pem" >"$server_log" 2>&1 &
  else
    "$floor_bin" "$mode" "$server_port" >"$server_log" 2>&1 &
  fi
  server_pid=$!
  local i
  for i in $(seq 1 50); do
    if grep -q '^listening' "$server_log" 2>/dev/null; then return 0; fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$server_log" >&2; die "$label: the floor server exited while starting"; }
    sleep 0.1
  done
  die "$label: the floor server did not start within 5 s"
}

# Stops the server; sets server_hwm to its peak working set in MiB (VmHWM).
stop_server() {
  server_hwm=$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$server_pid/status") \
    && [ -n "$server_hwm" ] || die "the server (pid $server_pid) is gone (log: $server_log)"
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  if grep -qE '^(fail|crit):' "$server_log"; then note "the server logged errors: $server_log"; fi
}

stats() { curl -sf --max-time 5 "http://127.0.0.1:$server_port/stats" || die "GET /stats failed on port $server_port"; }

# json_num JSON NAME: the numeric field NAME ("" if absent; the "process" object's names are unique in /stats).
json_num() { grep -o "\"$2\":[0-9]*" <<<"$1" | head -1 | cut -d: -f2 || true; }

# The server's user+sys CPU, in clock ticks (fields 14 and 15 of /proc/<pid>/stat; comm may hold spaces).
cpu_ticks() { sed 's/^.*) //' "/proc/$server_pid/stat" | awk '{print $12 + $13}'; }

# Server-side TIME_WAIT sockets: local port = the server's (client ends have it as the remote port).
time_wait() { ss -Htan state time-wait "( sport = :$server_port )" | wc -l; }

# run_wrk SECONDS OUTFILE [WRK ARGS...]: also writes OUTFILE.cpu, wrk's user and system CPU seconds.
run_wrk() {
  local secs=$1 file=$2; shift 2
  local TIMEFORMAT='%U %S'
  { time timeout --kill-after=5 $((secs + 30)) wrk -t"$wrk_threads" -c"$wrk_conns" -d"${secs}s" --latency "$@" \
    "http://127.0.0.1:$server_port/plaintext" >"$file" 2>&1 ; } 2>"$file.cpu" || { cat "$file" >&2; die "wrk failed (output: $file)"; }
}

# parse_wrk FILE: "req/s p50_ms p99_ms errors requests"; fails if wrk printed no rate.
parse_wrk() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0
      if (v ~ /m$/) return v * 60000; if (v ~ /s$/) return v * 1000; return -1
    }
    /^Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    / requests in / { req = $1 }
    /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    END {
      if (rps == "" || req == "" || p50 == "" || p99 == "") exit 1
      printf "%.0f %.3f %.3f %d %d\n", rps, p50, p99, err, req
    }' "$1" || { cat "$1" >&2; die "could not read wrk's results from $1"; }
}

# https_run LABEL PHASE MODE SECONDS: tls_client (16 loops, TLS 1.3) for SECONDS against the server; with a
# PHASE, a measured run (the server's CPU per connection) whose row goes to results.tsv, else a warm-up.
https_run() {
  local label=$1 phase=$2 mode=$3 secs=$4 file t0 t1 line req resumed err rps cpu
  file="$logs/${label}-r${round}-${phase:-warmup}-${mode}.txt"
  t0=$(cpu_ticks)
  timeout --kill-after=5 $((secs + 30)) "$tls_client_bin" "$mode" 1.3 "$server_port" 16 "$secs" >"$file" 2>&1 \
    || { cat "$file" >&2; die "$label: tls_client $mode failed (output: $file)"; }
  t1=$(cpu_ticks)
  [ -n "$phase" ] || return 0
  line=$(grep '^tls_client ' "$file") || die "$label: tls_client printed no result (output: $file)"
  req=$(grep -o 'requests=[0-9]*' <<<"$line" | cut -d= -f2); resumed=$(grep -o 'resumed=[0-9]*' <<<"$line" | cut -d= -f2)
  err=$(grep -o 'errors=[0-9]*' <<<"$line" | cut -d= -f2); rps=$(grep -o 'rps=[0-9.]*' <<<"$line" | cut -d= -f2)
  [ "$req" -gt 0 ] || die "$label: tls_client completed no request (output: $file)"
  if [ "$err" -gt 0 ]; then note "$label round $round ($phase): $err of $((req + err)) connections failed (output: $file)"; fi
  cpu=$(awk -v t="$((t1 - t0))" -v hz="$clk_tck" -v n="$req" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  echo "$label $phase: $line cpu_us_per_conn=$cpu"
  # Whether the server resumed what the client offered: a resumed run that did not is a finding, said here.
  if [ "$mode" = resume ] && [ $((resumed * 10)) -lt $((req * 9)) ]; then
    note "$label round $round: only $resumed of $req connections resumed TLS 1.3 (the server did not take the client's tickets)"
  fi
  printf '%s\t%s\t%s\t%s\t-\t-\t%s\t%s\t%s\t-\t%s\t-\t-\t-\t-\t-\n' "$round" "$label" "$phase" "${rps%.*}" "$err" "$req" "$req" "$cpu" >>"$results"
}

# churn LABEL: warm up, then one measured Connection: close phase; sets churn_row (results.tsv, no WS yet).
churn() {
  local label=$1 wfile="$logs/${label}-r${round}-churn.txt"
  run_wrk "$warmup_s" "$logs/${label}-r${round}-warmup.txt" -H 'Connection: close'
  local before t0 after tw t1 parsed rps p50 p99 err req
  before=$(stats); t0=$(cpu_ticks)
  run_wrk "$churn_s" "$wfile" -H 'Connection: close'
  # What the churn (warm-up included) left on this server's own port: every server gets a port with no
  # socket in any state, so all of these are its own. Counted as they are, not as a difference: the
  # kernel can recycle a TIME_WAIT entry when a client port comes round again, so a difference can even
  # be negative.
  t1=$(cpu_ticks); tw=$(time_wait); after=$(stats)
  parsed=$(parse_wrk "$wfile")
  read -r rps p50 p99 err req <<<"$parsed"
  [ "$req" -gt 0 ] || die "$label: wrk completed no request (output: $wfile)"
  local c0 c1 a0 a1
  c0=$(json_num "$before" connections); c1=$(json_num "$after" connections)
  a0=$(json_num "$before" allocatedBytes); a1=$(json_num "$after" allocatedBytes)
  [ -n "$c0" ] && [ -n "$a0" ] && [ -n "$c1" ] && [ -n "$a1" ] \
    || die "/stats has no process.connections/allocatedBytes: is samples/KestrelApp up to date? ($after)"
  # The second /stats request came on a connection of its own: not part of the churn.
  local conns=$((c1 - c0 - 1)) alloc cpu
  [ "$conns" -gt 0 ] || die "$label: the server counted no connection during the churn"
  alloc=$(awk -v a="$((a1 - a0))" -v n="$conns" 'BEGIN {printf "%.0f", a / n}')
  cpu=$(awk -v t="$((t1 - t0))" -v hz="$clk_tck" -v n="$conns" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  # Global, like churn_row: http_config writes both.
  client_cpu=$(awk -v n="$conns" 'NF == 2 {printf "%.1f", ($1 + $2) * 1e6 / n; found = 1} END {if (!found) print "-"}' "$wfile.cpu")
  churn_row="$round	$label	churn	$rps	$p50	$p99	$err	$req	$conns	$alloc	$cpu	$tw"
  # The Winsock transport's own view of who closed first (shows whether the deferred FIN took effect).
  local p0 p1 d0 d1
  p0=$(json_num "$before" peerClosedFirst); p1=$(json_num "$after" peerClosedFirst)
  d0=$(json_num "$before" deferFinTimeouts); d1=$(json_num "$after" deferFinTimeouts)
  if [ -n "$p0" ] && [ -n "$p1" ] && [ -n "$d0" ] && [ -n "$d1" ]; then
    note "$label round $round: peerClosedFirst +$((p1 - p0)), deferFinTimeouts +$((d1 - d0)) over $conns connections"
  fi
}

# floor_churn: the Connection: close phase against the C server (no /stats: connections are wrk's
# requests, one per connection; nothing is allocated by a GC); sets churn_row and client_cpu.
floor_churn() {
  local label=floor wfile="$logs/floor-r${round}-churn.txt"
  budget $((warmup_s + churn_s + 5))
  start_floor floor http
  run_wrk "$warmup_s" "$logs/floor-r${round}-warmup.txt" -H 'Connection: close'
  local t0 t1 tw parsed rps p50 p99 err req cpu
  t0=$(cpu_ticks)
  run_wrk "$churn_s" "$wfile" -H 'Connection: close'
  t1=$(cpu_ticks); tw=$(time_wait)
  parsed=$(parse_wrk "$wfile")
  read -r rps p50 p99 err req <<<"$parsed"
  [ "$req" -gt 0 ] || die "floor: wrk completed no request (output: $wfile)"
  cpu=$(awk -v t="$((t1 - t0))" -v hz="$clk_tck" -v n="$req" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  client_cpu=$(awk -v n="$req" 'NF == 2 {printf "%.1f", ($1 + $2) * 1e6 / n; found = 1} END {if (!found) print "-"}' "$wfile.cpu")
  stop_server
  printf '%s\t%s\t%s\t-\t-\n' "$round	floor	churn	$rps	$p50	$p99	$err	$req	$req	-	$cpu	$tw" "$server_hwm" "$client_cpu" >>"$results"
}

# floor_transport: TransportBench's client against the C server's transport protocol; the server's CPU
# over the whole client run (the C server has no warm-up to leave out) divided by the client's connections.
floor_transport() {
  start_floor floor transport
  local t0 t1 out ok errors cpu rate
  t0=$(cpu_ticks)
  out=$(timeout --kill-after=5 $((tb_s + tb_warmup + 60)) dotnet "$tb_dll" client --port "$server_port" \
    --seconds $((tb_s + tb_warmup)) --concurrency "$tb_conc" 2>"$tfile" | grep '^ok=' | tail -1) \
    || { tail -20 "$tfile" >&2; die "TransportBench client against the floor failed (stderr: $tfile)"; }
  t1=$(cpu_ticks)
  stop_server
  ok=$(sed -n 's/^ok=\([0-9]*\) .*/\1/p' <<<"$out"); errors=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<<"$out")
  [ -n "$ok" ] && [ "$ok" -gt 0 ] || die "floor: the transport client completed no connection ('$out')"
  cpu=$(awk -v t="$((t1 - t0))" -v hz="$clk_tck" -v n="$ok" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  rate=$(awk -v n="$ok" -v s="$((tb_s + tb_warmup))" 'BEGIN {printf "%.1f", n / s}')
  echo "floor: ok=$ok errors=$errors conns_per_s=$rate cpu_us_per_conn=$cpu"
  printf '%s\t%s\ttransport\t%s\t-\t-\t%s\t-\t%s\t-\t%s\t-\t-\t-\t-\t-\n' "$round" floor "$rate" "$errors" "$ok" "$cpu" >>"$results"
}

# keepalive LABEL: one measured keep-alive phase; sets keepalive_row.
keepalive() {
  local label=$1 wfile="$logs/${label}-r${round}-keepalive.txt" parsed rps p50 p99 err req
  run_wrk "$keepalive_s" "$wfile"
  parsed=$(parse_wrk "$wfile")
  read -r rps p50 p99 err req <<<"$parsed"
  [ "$req" -gt 0 ] || die "$label: wrk completed no request (output: $wfile)"
  keepalive_row="$round	$label	keepalive	$rps	$p50	$p99	$err	$req	-	-	-	-	-	-	-	-"
}

# http_config LABEL TRANSPORT WITH_KEEPALIVE [SERVER ARGS...]: one fresh server, its phases, its rows.
http_config() {
  local label=$1 transport=$2 with_keepalive=$3; shift 3
  budget $((warmup_s + churn_s + keepalive_s * with_keepalive + 5))
  start_server "$label" "$transport" "$@"
  churn "$label"
  if [ "$with_keepalive" = 1 ]; then keepalive "$label"; fi
  stop_server
  printf '%s\t%s\t%s\t-\t-\n' "$churn_row" "$server_hwm" "$client_cpu" >>"$results"
  if [ "$with_keepalive" = 1 ]; then printf '%s\n' "$keepalive_row" >>"$results"; fi
}

# idle_config LABEL TRANSPORT [SERVER ARGS...]: one fresh server and TransportBench's idle client against it,
# both with their descriptor limits raised to nofile_limit; one results.tsv row.
idle_config() {
  local label=$1 transport=$2; shift 2
  budget "$idle_each"
  server_nofile=$nofile_limit
  start_server "$label" "$transport" "$@"
  server_nofile=""
  local ifile="$logs/${label}-r${round}-idle.txt" line
  # The client bounds itself (60 s to open the connections, the timed requests' own bound); this is the backstop.
  line=$( (ulimit -n "$nofile_limit" && exec timeout --kill-after=5 $((idle_each + 120)) dotnet "$tb_dll" idle --label "$label" \
      --port "$server_port" --pid "$server_pid" --connections "$idle_conns" --requests "$idle_requests" --connect-seconds 60) \
      2>"$ifile" | grep '^idle=' | tail -1) \
    || { tail -20 "$ifile" >&2; die "TransportBench idle against $label failed (stderr: $ifile)"; }
  stop_server
  if grep -q 'warning:' "$ifile"; then note "$label round $round: $(grep 'warning:' "$ifile" | head -1)"; fi
  echo "$label: $line"
  # idle=L held=N rss_before_kib=K rss_held_kib=K rss_per_conn_bytes=B max_ms=T p99_us=U p50_us=U errors=E heap_per_conn_bytes=H requests=M ...
  awk -v r="$round" -v c="$label" -v ws="$server_hwm" '{
      for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      if (f["held"] == "" || f["rss_per_conn_bytes"] == "" || f["max_ms"] == "" || f["p99_us"] == "" || f["p50_us"] == "" || f["errors"] == "" || f["heap_per_conn_bytes"] == "" || f["requests"] == "") exit 1
      printf "%s\t%s\tidle\t-\t%.3f\t%.3f\t%s\t%s\t%s\t%s\t-\t-\t%s\t-\t%s\t%s\n", r, c, f["p50_us"] / 1000, f["p99_us"] / 1000, f["errors"], f["requests"], f["held"], f["rss_per_conn_bytes"], ws, f["max_ms"], f["heap_per_conn_bytes"]
    }' <<<"$line" >>"$results" || die "TransportBench printed no valid idle line: '$line'"
}

header="round	config	phase	rps	p50_ms	p99_ms	errors	requests	conns	alloc_per_conn	cpu_us_per_conn	time_wait	peak_ws_mib	client_cpu_us_per_conn	max_ms	gc_heap_per_conn"
row_format='%-5s %-17s %-10s %9s %8s %8s %7s %8s %11s %12s %10s %8s %11s\n'
print_header() {
  # shellcheck disable=SC2059
  printf "$row_format" round config phase "req/s" "p50 ms" "p99 ms" errors conns "alloc/conn" "cpu us/conn" TIME_WAIT "WS MiB" "client us/c"
}
# print_rows FILTER: the rows of results.tsv whose first column matches (awk regex), but the idle phase's.
print_rows() {
  awk -F'\t' -v r="$1" -v fmt="$row_format" 'NR > 1 && $1 ~ r && $3 != "idle" {
    if ($3 == "transport") printf fmt, $1, $2, $3, $4, "-", "-", $7, $9, $10, $11, "-", "-", "-"
    else printf fmt, $1, $2, $3, $4, $5, $6, $7, $9, $10, $11, $12, $13, $14 }' "$results"
}

idle_format='%-5s %-20s %7s %11s %12s %8s %8s %8s %7s %8s\n'
print_idle_header() {
  # shellcheck disable=SC2059
  printf "$idle_format" round config held "RSS B/conn" "heap B/conn" "max ms" "p99 ms" "p50 ms" errors "WS MiB"
}
# print_idle_rows FILTER: the idle phase's rows of results.tsv whose first column matches (awk regex).
print_idle_rows() {
  awk -F'\t' -v r="$1" -v fmt="$idle_format" 'NR > 1 && $1 ~ r && $3 == "idle" {
    printf fmt, $1, $2, $9, $10, $16, $15, $6, $5, $7, $13 }' "$results"
}

# median CONFIG PHASE COLUMN: the median of a results.tsv column, over the rounds ("" if none).
median() {
  awk -F'\t' -v c="$1" -v p="$2" -v col="$3" 'NR > 1 && $2 == c && $3 == p && $col != "-" {print $col}' "$results" \
    | sort -g | awk '{v[NR] = $1} END {if (NR == 0) exit; m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.10g\n", m}'
}

# shown NUMBER: a median for the table (whole numbers from 100 up, else 3 significant digits; "-" stays).
shown() { awk -v v="$1" 'BEGIN {if (v == "-") print v; else if (v >= 100 || v <= -100) printf "%.0f\n", v; else printf "%.3g\n", v}'; }

# ratio A B: A/B with two decimals; n/a when either is missing or B is 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b}'; }

# ---------------------------------------------------------------------------------------------------
command -v dotnet >/dev/null 2>&1 || die "the .NET SDK (dotnet) is not on PATH"
ensure_tool wrk wrk
ensure_tool curl curl
ensure_tool ss iproute2
ensure_tool gcc gcc
ensure_tool gnuplot gnuplot-nox
mkdir -p "$out" "$logs" "$build_dir"
rm -f "$logs"/*.log "$logs"/*.txt
machine
tb_present=0
if [ "$skip_tb" = 1 ]; then
  note "transport-only phase skipped (SKIP_TRANSPORT_BENCH=1)"
elif [ -d "$tb_project" ]; then
  tb_present=1
else
  note "benchmarks/TransportBench does not exist: the transport-only phase cannot run; its ratios will read n/a and the run exits 3"
fi

# One idle run: the server's start and stop, the client's start, warm-up and two 2 s settles (~7 s), opening and
# later closing the connections (~2,500/s) and the timed requests (10 ms apart, under 1 ms each). Measured with
# 500 requests: 11.7 s a run at 4,000 connections, 15 s at 15,000 (this gives 13 and 18).
idle_each=$(( 7 + idle_conns / 2500 + idle_requests * 11 / 1000 ))
# Deadline check before anything starts: rounds x phases + the transport-only runs + the outbound runs + the
# idle runs + builds and startups.
phases_estimate=$(( $(on http) * rounds * (6 * (warmup_s + churn_s) + 2 * keepalive_s + 12)
  + tb_present * ($(on transport) * rounds * 4 * (tb_s + tb_warmup + 2) + $(on outbound) * rounds * (quick == 1 ? 2 : 3) * (tb_s + tb_warmup + 6)
                  + $(on idle) * idle_rounds * 3 * idle_each)
  + $(on https) * https_rounds * 3 * (https_warmup + 2 * https_s + 5) ))
estimate=$((phases_estimate + 40))
echo "estimate: ~${estimate}s (limit ${time_limit}s)"
[ "$estimate" -le "$time_limit" ] || die "the settings need ~${estimate}s, over TIME_LIMIT=${time_limit}s: fewer ROUNDS or shorter phases"
if [ "$tb_present" = 1 ] && want idle && [ "$nofile_limit" -lt $((idle_conns + 1000)) ]; then
  die "the idle phase holds IDLE_CONNECTIONS=$idle_conns connections, so its server and client each need $((idle_conns + 1000)) descriptors (N + 1000); the hard limit (ulimit -Hn) is $nofile_limit: set IDLE_CONNECTIONS to at most $((nofile_limit - 1000)), or raise the hard limit"
fi

echo "== build (Release)"
budget 60
dotnet build samples/KestrelApp -c Release --artifacts-path "$build_dir" -nologo -v quiet >"$logs/build-app.txt" 2>&1 \
  || { tail -30 "$logs/build-app.txt" >&2; die "building samples/KestrelApp failed"; }
[ -f "$app_dll" ] || die "no $app_dll after the build"
echo "samples/KestrelApp -> ${app_dll#"$root"/}"
if [ "$tb_present" = 1 ]; then
  budget 60
  dotnet build "$tb_project" -c Release --artifacts-path "$build_dir" -nologo -v quiet >"$logs/build-tb.txt" 2>&1 \
    || { tail -30 "$logs/build-tb.txt" >&2; die "building benchmarks/TransportBench failed"; }
  [ -f "$tb_dll" ] || die "no $tb_dll after the build"
  echo "benchmarks/TransportBench -> ${tb_dll#"$root"/}"
fi
budget 20
gcc -O2 -Wall -Wextra -Werror -o "$floor_bin" "$floor_src" 2>"$logs/build-floor.txt" \
  || { cat "$logs/build-floor.txt" >&2; die "building benchmarks/floor/floor.c failed"; }
echo "benchmarks/floor/floor.c -> ${floor_bin#"$root"/}"
if want https; then
  # OpenSSL's headers for the TLS floor and client (Debian's libssl-dev), and its tool for the certificate.
  ensure_tool openssl openssl
  if [ ! -f /usr/include/openssl/ssl.h ]; then ensure_package libssl-dev; fi
  gcc -O2 -Wall -Wextra -Werror -o "$tls_floor_bin" "$tls_floor_src" -lssl -lcrypto 2>"$logs/build-tls-floor.txt" \
    || { cat "$logs/build-tls-floor.txt" >&2; die "building benchmarks/floor/tls_floor.c failed"; }
  gcc -O2 -Wall -Wextra -Werror -pthread -o "$tls_client_bin" "$tls_client_src" -lssl -lcrypto 2>"$logs/build-tls-client.txt" \
    || { cat "$logs/build-tls-client.txt" >&2; die "building benchmarks/floor/tls_client.c failed"; }
  echo "benchmarks/floor/tls_floor.c, tls_client.c -> ${build_dir#"$root"/}"
  # One ECDSA P-256 certificate for every server of the run, as the issue's measurements used.
  mkdir -p "$https_dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$https_dir/key.pem" -out "$https_dir/cert.pem" \
    >"$logs/https-cert.txt" 2>&1 || { cat "$logs/https-cert.txt" >&2; die "making the HTTPS phase's certificate failed"; }
fi
# The builds took what they took (a cold restore, a loaded machine): fail now rather than at the end.
budget "$phases_estimate"

echo "$header" >"$results"
want http && for round in $(seq 1 "$rounds"); do
  echo
  echo "== HTTP round $round/$rounds (${SECONDS}s)"
  # Counterbalanced: odd rounds run winsock first, even rounds the reverse, so neither transport always
  # follows the other's leftovers (TIME_WAIT, cycled client ports, a warmer or cooler machine).
  configs=(winsock winsock-sockets sockets winsock-inline winsock+deferFIN floor)
  if [ $((round % 2)) = 0 ]; then configs=(floor winsock+deferFIN winsock-inline sockets winsock-sockets winsock); fi
  for config in "${configs[@]}"; do
    case "$config" in
      winsock) http_config winsock winsock 1 ;;
      winsock-sockets) http_config winsock-sockets winsock 0 --Kestrel:Transport:Winsock:Engine=Sockets ;;
      sockets) http_config sockets sockets 1 ;;
      winsock-inline) http_config winsock-inline winsock 0 --Kestrel:Transport:Winsock:UnsafePreferInlineScheduling=true ;;
      winsock+deferFIN) http_config winsock+deferFIN winsock 0 "--Kestrel:Transport:Winsock:DeferFinTimeout=$defer_fin" ;;
      floor) floor_churn ;;
    esac
  done
  print_header
  print_rows "^$round\$"
done

if [ "$tb_present" = 1 ] && want transport; then
  for round in $(seq 1 "$rounds"); do
    echo
    echo "== transport-only round $round/$rounds (${SECONDS}s)"
    order="winsock winsock-sockets sockets floor"
    if [ $((round % 2)) = 0 ]; then order="floor sockets winsock-sockets winsock"; fi
    for config in $order; do
      budget $((tb_s + tb_warmup + 5))
      tfile="$logs/transport-${config}-r${round}.txt"
      if [ "$config" = floor ]; then
        floor_transport
        continue
      fi
      args=(--transport winsock)
      case "$config" in
        winsock-sockets) args=(--transport winsock --engine sockets) ;;
        sockets) args=(--transport sockets) ;;
      esac
      line=$(timeout --kill-after=5 $((tb_s + tb_warmup + 60)) dotnet "$tb_dll" run "${args[@]}" \
        --seconds "$tb_s" --warmup "$tb_warmup" --concurrency "$tb_conc" 2>"$tfile" | grep '^transport=' | tail -1) \
        || { tail -20 "$tfile" >&2; die "TransportBench run ${args[*]} failed (stderr: $tfile)"; }
      echo "$config: $line"
      # transport=T conns=N conns_per_s=R alloc_per_conn=B cpu_us_per_conn=U errors=E
      awk -v r="$round" -v c="$config" '{
          for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
          if (f["conns"] == "" || f["conns_per_s"] == "" || f["alloc_per_conn"] == "" || f["cpu_us_per_conn"] == "" || f["errors"] == "") exit 1
          printf "%s\t%s\ttransport\t%s\t-\t-\t%s\t-\t%s\t%s\t%s\t-\t-\t-\t-\t-\n", r, c, f["conns_per_s"], f["errors"], f["conns"], f["alloc_per_conn"], f["cpu_us_per_conn"]
        }' <<<"$line" >>"$results" || die "TransportBench printed no valid result line: '$line'"
    done
  done
fi

if [ "$tb_present" = 1 ] && want outbound; then
  # Each client warms up at least 4 s, quick runs too: after 1 s the tiered JIT is still recompiling the
  # client's hot paths (perf: libclrjit took 4.5 % of the client's samples 6 s in, on ours), so a short
  # window measured compilation, not connections; a client that churns for real has long since warmed up.
  ob_warmup=$(( tb_warmup > 4 ? tb_warmup : 4 ))
  for round in $(seq 1 "$rounds"); do
    echo
    echo "== outbound round $round/$rounds (${SECONDS}s)"
    # Full runs add ours on .NET's sockets (the engine Windows runs), which quick runs leave out for time.
    if [ "$quick" = 1 ]; then
      order="default winsock"
      if [ $((round % 2)) = 0 ]; then order="winsock default"; fi
    else
      order="default winsock winsock-sockets"
      if [ $((round % 2)) = 0 ]; then order="winsock-sockets winsock default"; fi
    fi
    for handler in $order; do
      # A fresh server on a port no TCP state uses: the client TIME_WAIT entries for it are this run's alone
      # (with tcp_tw_reuse, a later run's connects would take over an earlier run's entries).
      budget $((tb_s + ob_warmup + 25))
      start_server "outbound-server-$handler" sockets
      ofile="$logs/outbound-${handler}-r${round}.txt"
      line=$(timeout --kill-after=5 $((tb_s + ob_warmup + 30)) dotnet "$tb_dll" outbound --handler "$handler" --port "$server_port" \
        --seconds "$tb_s" --warmup "$ob_warmup" --concurrency 16 2>"$ofile" | grep '^outbound=' | tail -1) \
        || { tail -20 "$ofile" >&2; die "TransportBench outbound --handler $handler failed (stderr: $ofile)"; }
      echo "outbound-$handler: $line"
      # outbound=H requests=N rps=R cpu_us_per_req=U time_wait=T time_wait_per_req=F errors=E
      awk -v r="$round" -v c="outbound-$handler" '{
          for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
          if (f["requests"] == "" || f["rps"] == "" || f["cpu_us_per_req"] == "" || f["time_wait_per_req"] == "" || f["errors"] == "") exit 1
          printf "%s\t%s\toutbound\t%s\t-\t-\t%s\t%s\t-\t-\t%s\t%s\t-\t-\t-\t-\n", r, c, f["rps"], f["errors"], f["requests"], f["cpu_us_per_req"], f["time_wait_per_req"]
        }' <<<"$line" >>"$results" || die "TransportBench printed no valid outbound line: '$line'"
      stop_server
    done
  done
fi

if want https; then
  for round in $(seq 1 "$https_rounds"); do
    echo
    echo "== HTTPS round $round/$https_rounds (${SECONDS}s): Connection: close over TLS 1.3, full handshakes, then resumed"
    order="https-winsock https-sockets https-floor"
    if [ $((round % 2)) = 0 ]; then order="https-floor https-sockets https-winsock"; fi
    for config in $order; do
      budget $((https_warmup + 2 * https_s + 20))
      case "$config" in
        https-winsock) server_scheme=https start_server "$config" winsock ;;
        https-sockets) server_scheme=https start_server "$config" sockets ;;
        https-floor) start_floor "$config" tls ;;
      esac
      https_run "$config" "" full "$https_warmup"
      https_run "$config" https full "$https_s"
      # Each loop's first connection of the resumed run is a full handshake (16 of thousands); the rest offer a ticket.
      https_run "$config" https-resumed resume "$https_s"
      stop_server
    done
  done
fi

if [ "$tb_present" = 1 ] && want idle; then
  for round in $(seq 1 "$idle_rounds"); do
    echo
    echo "== idle round $round/$idle_rounds: $idle_conns connections held per server (${SECONDS}s)"
    order="idle-winsock idle-winsock-sockets idle-sockets"
    if [ $((round % 2)) = 0 ]; then order="idle-sockets idle-winsock-sockets idle-winsock"; fi
    for config in $order; do
      case "$config" in
        idle-winsock) idle_config idle-winsock winsock ;;
        idle-winsock-sockets) idle_config idle-winsock-sockets winsock --Kestrel:Transport:Winsock:Engine=Sockets ;;
        idle-sockets) idle_config idle-sockets sockets ;;
      esac
    done
    print_idle_header
    print_idle_rows "^$round\$"
  done
fi

echo
echo "== summary: medians over $rounds rounds (every measurement: ${results#"$root"/})"
echo "config	phase	rps	p50_ms	p99_ms	errors	alloc_per_conn	cpu_us_per_conn	time_wait	peak_ws_mib	client_cpu_us_per_conn	max_ms	gc_heap_per_conn" >"$summary"
# The table of the other phases, when any ran (PHASES=idle runs none).
has_main=$(awk -F'\t' 'NR > 1 && $3 != "idle" {print 1; exit}' "$results")
if [ -n "$has_main" ]; then print_header; fi
for key in "winsock churn" "winsock-sockets churn" "sockets churn" "winsock-inline churn" "winsock+deferFIN churn" "floor churn" "winsock keepalive" "sockets keepalive" "winsock transport" "winsock-sockets transport" "sockets transport" "floor transport" "outbound-default outbound" "outbound-winsock outbound" "outbound-winsock-sockets outbound" "https-winsock https" "https-sockets https" "https-floor https" "https-winsock https-resumed" "https-sockets https-resumed" "https-floor https-resumed" "idle-winsock idle" "idle-winsock-sockets idle" "idle-sockets idle"; do
  read -r config phase <<<"$key"
  [ -n "$(median "$config" "$phase" 4)$(median "$config" "$phase" 10)" ] || continue
  vals=()
  for col in 4 5 6 7 10 11 12 13 14 15 16; do v=$(median "$config" "$phase" "$col"); vals+=("${v:--}"); done
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$config" "$phase" "${vals[@]}" >>"$summary"
  # The idle rows have a table of their own, below.
  [ "$phase" != idle ] || continue
  shownvals=(); for v in "${vals[@]}"; do shownvals+=("$(shown "$v")"); done
  if [ "$phase" = transport ]; then
    # shellcheck disable=SC2059
    printf "$row_format" med "$config" "$phase" "${shownvals[0]}" - - "${shownvals[3]}" - "${shownvals[4]}" "${shownvals[5]}" - - -
  else
    # shellcheck disable=SC2059
    printf "$row_format" med "$config" "$phase" "${shownvals[@]:0:4}" - "${shownvals[@]:4:5}"
  fi
done
if [ -n "$has_main" ]; then
  echo "(transport rows: req/s = connections/s, no HTTP; alloc/conn in bytes; TIME_WAIT: server side, after the churn; WS: peak working set;"
  echo " client us/c: wrk's CPU per connection; outbound rows: cpu us/conn is the client's CPU per request, TIME_WAIT the client's per request)"
fi
if [ -n "$(median idle-winsock idle 10)$(median idle-winsock-sockets idle 10)$(median idle-sockets idle 10)" ]; then
  echo
  echo "idle: $idle_conns connections held per server, medians over $idle_rounds rounds"
  print_idle_header
  for config in idle-winsock idle-winsock-sockets idle-sockets; do
    vals=()
    for col in 9 10 16 15 6 5 7 13; do v=$(median "$config" idle "$col"); vals+=("$(shown "${v:--}")"); done
    # shellcheck disable=SC2059
    printf "$idle_format" med "$config" "${vals[@]}"
  done
  echo "(RSS and heap B/conn: the server's VmRSS and GC heap while holding them, minus before, per held connection; max, p99,"
  echo " p50: of $idle_requests sequential requests on one more connection, 10 ms apart; WS: the server's peak working set)"
fi
echo

lines=(
  "churn_ratio=$(ratio "$(median winsock churn 4)" "$(median sockets churn 4)")"
  "keepalive_ratio=$(ratio "$(median winsock keepalive 4)" "$(median sockets keepalive 4)")"
  "cpu_per_conn_ratio=$(ratio "$(median winsock churn 11)" "$(median sockets churn 11)")"
  "transport_conn_ratio=$(ratio "$(median winsock transport 4)" "$(median sockets transport 4)")"
  "alloc_per_conn_ratio=$(ratio "$(median winsock transport 10)" "$(median sockets transport 10)")"
  "time_wait_ratio=$(ratio "$(median winsock+deferFIN churn 12)" "$(median sockets churn 12)")"
  "deferfin_churn_ratio=$(ratio "$(median winsock+deferFIN churn 4)" "$(median winsock churn 4)")"
  "deferfin_cpu_ratio=$(ratio "$(median winsock+deferFIN churn 11)" "$(median winsock churn 11)")"
  "transport_cpu_ratio=$(ratio "$(median winsock transport 11)" "$(median sockets transport 11)")"
  "inline_cpu_ratio=$(ratio "$(median winsock-inline churn 11)" "$(median sockets churn 11)")"
  "floor_cpu_ratio=$(ratio "$(median winsock transport 11)" "$(median floor transport 11)")"
  "sockets_engine_cpu_ratio=$(ratio "$(median winsock-sockets churn 11)" "$(median sockets churn 11)")"
  "outbound_churn_ratio=$(ratio "$(median outbound-winsock outbound 4)" "$(median outbound-default outbound 4)")"
  "outbound_time_wait_ratio=$(ratio "$(median outbound-winsock outbound 12)" "$(median outbound-default outbound 12)")"
  "idle_memory_ratio=$(ratio "$(median idle-winsock idle 10)" "$(median idle-sockets idle 10)")"
  "idle_max_latency_ratio=$(ratio "$(median idle-winsock idle 15)" "$(median idle-sockets idle 15)")"
  "idle_p99_latency_ratio=$(ratio "$(median idle-winsock idle 6)" "$(median idle-sockets idle 6)")"
  "idle_sockets_engine_memory_ratio=$(ratio "$(median idle-winsock-sockets idle 10)" "$(median idle-sockets idle 10)")"
  "idle_sockets_engine_max_latency_ratio=$(ratio "$(median idle-winsock-sockets idle 15)" "$(median idle-sockets idle 15)")"
  "idle_sockets_engine_p99_latency_ratio=$(ratio "$(median idle-winsock-sockets idle 6)" "$(median idle-sockets idle 6)")"
  "outbound_cpu_ratio=$(ratio "$(median outbound-winsock outbound 11)" "$(median outbound-default outbound 11)")"
  "outbound_sockets_engine_churn_ratio=$(ratio "$(median outbound-winsock-sockets outbound 4)" "$(median outbound-default outbound 4)")"
  "outbound_sockets_engine_cpu_ratio=$(ratio "$(median outbound-winsock-sockets outbound 11)" "$(median outbound-default outbound 11)")"
  "https_churn_cpu_ratio=$(ratio "$(median https-winsock https 11)" "$(median https-sockets https 11)")"
  "https_floor_cpu_ratio=$(ratio "$(median https-winsock https 11)" "$(median https-floor https 11)")"
  "https_resumed_cpu_ratio=$(ratio "$(median https-winsock https-resumed 11)" "$(median https-sockets https-resumed 11)")"
)
printf '%s\n' "${lines[@]}" >"$out/ratios.txt"

# The chart: median server CPU per connection of every configuration, HTTP churn and transport only.
chart_data="$out/cpu_per_conn.dat"
{
  echo "# config churn transport"
  for config in floor winsock winsock-inline winsock-sockets sockets winsock+deferFIN; do
    c=$(median "$config" churn 11); t=$(median "$config" transport 11)
    case "$config" in
      floor) name="floor (C epoll)" ;;
      winsock) name="ours (default)" ;;
      winsock-inline) name="ours, inline" ;;
      winsock-sockets) name="ours, sockets eng." ;;
      sockets) name="Kestrel Sockets" ;;
      winsock+deferFIN) name="ours, deferred FIN" ;;
    esac
    echo "\"$name\" ${c:-NaN} ${t:-NaN}"
  done
} >"$chart_data"
if ! want http && ! want transport; then
  note "no chart: PHASES ($phases) has neither http nor transport"
else
  gnuplot <<GNUPLOT 2>"$logs/gnuplot.txt" || note "gnuplot failed: $logs/gnuplot.txt"
set terminal svg size 1000,480 dynamic background rgb 'white' font 'sans,12'
set output '$out/cpu_per_conn.svg'
set title "Server CPU per connection, medians of $rounds rounds (lower is better)"
set ylabel 'µs per connection'
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set key top left
set grid ytics
set yrange [0:*]
plot '$chart_data' using 2:xtic(1) title 'HTTP churn (Connection: close)', '' using 3 title 'transport only'
GNUPLOT
fi
missing=""
if [ "$tb_present" = 0 ] && [ "$skip_tb" != 1 ]; then missing="; benchmarks/TransportBench missing: exit 3"; fi
echo "took ${SECONDS}s; results in ${out#"$root"/}/ (results.tsv, summary.tsv, ratios.txt, cpu_per_conn.svg, logs/)$missing"
printf '%s\n' "${lines[@]}"
if [ -n "$missing" ]; then exit 3; fi
