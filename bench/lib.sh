# Helpers shared by the benchmarks (sourced, not run): processes
# started in the background and stopped on exit, ports, wrk, and CPU and memory
# figures from /proc. The sourcing script sets LOGS (and, for run_wrk and
# wait_until_accepting, THREADS, BODY, STREAMS and CALLBACK_KEY; MIX_RECORDS for
# a mix of bodies, see bench/callback.lua) first.
# shellcheck shell=bash

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- CPU placement --------------------------------------------------------------

# By default every process may run on every core: on a small machine the load
# generator, the service and the broker take turns on the same cores, and the
# broker's garbage collections and stalls land in the service's latency.
# BENCH_CPUS_BROKER, BENCH_CPUS_SERVICE (the bridge, the ceiling, the publishing
# reference, the Python baseline) and BENCH_CPUS_LOAD (wrk, oha) each pin one
# group to cores of its own, as taskset(1) lists (`0-3`, `4,5`): on a machine
# with cores to spare, the service then runs as in production, where Kafka and
# CSS are other machines. Each group's command is prefixed with *_ON.
# shellcheck disable=SC2034 # prefix is a nameref
on_cpus() { # array-name cpu-list: sets the array to the command prefix
  local -n prefix=$1
  prefix=()
  [ -n "$2" ] || return 0
  taskset -c "$2" true 2>/dev/null ||
    die "cannot run on cores $2 (taskset -c $2); this machine has $(nproc)"
  prefix=(taskset -c "$2")
}
on_cpus BROKER_ON "${BENCH_CPUS_BROKER:-}"
on_cpus SERVICE_ON "${BENCH_CPUS_SERVICE:-}"
on_cpus LOAD_ON "${BENCH_CPUS_LOAD:-}"

# The placement, for a results file's header.
placement() {
  if [ -z "${BENCH_CPUS_BROKER:-}${BENCH_CPUS_SERVICE:-}${BENCH_CPUS_LOAD:-}" ]; then
    echo "load generator, services and broker share the machine's cores"
  else
    echo "cores: broker ${BENCH_CPUS_BROKER:-any}, services ${BENCH_CPUS_SERVICE:-any}, load generator ${BENCH_CPUS_LOAD:-any}"
  fi
}

# --- processes: everything started here is stopped on exit -----------------------

STARTED=()

# The process ids below $1 (children, grandchildren, ...).
descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$child"
    descendants "$child"
  done
}

# Stops process $1 and its descendants: TERM, then KILL after 5 s.
stop_tree() {
  local pid=$1 pids i
  pids="$pid $(descendants "$pid" | tr '\n' ' ')"
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    # shellcheck disable=SC2086
    kill -0 $pids 2>/dev/null || break
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local pid dir
  for pid in "${STARTED[@]}"; do
    stop_tree "$pid"
  done
  for dir in "${KAFKA_STARTED[@]}"; do
    "$ROOT/scripts/kafka" down "$dir" || true
  done
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts a service's command in the background, on BENCH_CPUS_SERVICE, with its
# output in $LOGS/$1.log; sets PID (the command's own: taskset execs it). A
# shell function given as the command places its own commands.
start() {
  local name=$1 on=()
  shift
  declare -F "$1" >/dev/null || on=(${SERVICE_ON[@]+"${SERVICE_ON[@]}"})
  ${on[@]+"${on[@]}"} "$@" >"$LOGS/$name.log" 2>&1 &
  PID=$!
  STARTED+=("$PID")
}

stop() {
  local pid=$1 kept=() p
  stop_tree "$pid"
  for p in "${STARTED[@]}"; do
    [ "$p" = "$pid" ] || kept+=("$p")
  done
  STARTED=("${kept[@]}")
}

# The bridge as the benchmarks run it, with its log in $LOGS/$1.log: on
# 127.0.0.1:$2, publishing to topic $3 on $BROKERS, checking every callback's
# signature against $CALLBACK_KEY, everything else as in production. Sets PID.
start_bridge() { # name port topic
  start "$1" env "${BRIDGE_ENV[@]}" BRIDGE_CALLBACK_KEYS="$CALLBACK_KEY" \
    "$BRIDGE" serve --listen "127.0.0.1:$2" --kafka-brokers "$BROKERS" --kafka-topic "$3"
}

# The parse ceiling on 127.0.0.1:$1, checking signatures as the bridge does.
# Sets PID.
start_ceiling() { # port
  start ceiling env CEILING_CALLBACK_KEY="$CALLBACK_KEY" "$CEILING" "127.0.0.1:$1"
}

# Starts system $1 (`bridge`, publishing to topic $2, or `ceiling`) on a free
# port, waits until it answers 200, and warms it (WARMUP s of wrk at 32
# connections). Sets URL and SUT_PID.
serve_warm() { # bridge topic | ceiling
  local port
  port=$(free_port)
  URL=http://127.0.0.1:$port/css/callback
  case "$1" in
  bridge) start_bridge bridge "$port" "$2" ;;
  ceiling) start_ceiling "$port" ;;
  *) die "serve_warm: unknown system $1 (bridge, ceiling)" ;;
  esac
  SUT_PID=$PID
  wait_for_port "$port" 30 || die "$1 did not open port $port, see $LOGS/$1.log"
  wait_until_accepting "$URL" 60 || die "$1 does not answer 200, see $LOGS/$1.log"
  run_wrk "$URL" 32 "$WARMUP" "$LOGS/wrk-$1-warmup.txt"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# POSTs the body until it is answered 200 (the producer is connected and the
# topic known), for at most $2 seconds. Adds the accepted posts to READY_POSTS.
wait_until_accepting() { # url seconds
  local i code signed
  READY_POSTS=0
  sign_now
  signed=$(sed "0,/{/s//{\"t\":$SIGN_T,\"sign\":\"$SIGN\",/" "$BODY")
  for ((i = 0; i < $2 * 5; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X POST \
      -H 'content-type: application/json' --data-binary "$signed" "$1" || true)
    if [ "$code" = 200 ]; then
      READY_POSTS=$((READY_POSTS + 1))
      # A multi-worker server is ready when several posts in a row succeed.
      [ "$READY_POSTS" -ge 4 ] && return 0
    else
      READY_POSTS=0
      sleep 0.2
    fi
  done
  return 1
}

# --- what is sent ----------------------------------------------------------------

# Sets PARTITIONS, STREAMS and MIX (the bodies sent, PATH=WEIGHT each, see
# bench/callback.lua) from BENCH_PROFILE and the BENCH_* settings.
choose_profile() {
  local profile_partitions profile_streams profile_mix
  # The profile sets the defaults of the topic and the traffic: `default`, 3
  # partitions and 64 streams all sending the seed sample; `scale`, what
  # production topics look like: 24 partitions, 10,000 streams, and callbacks of
  # real shapes, most of a few records, some of 40, one in a hundred of 300.
  PROFILE=${BENCH_PROFILE:-default}
  case "$PROFILE" in
  default) profile_partitions=3 profile_streams=64 profile_mix="tests/fixtures/seed-sample.json=1" ;;
  scale)
    profile_partitions=24 profile_streams=10000
    profile_mix="tests/fixtures/seed-sample.json=90 bench/bodies/details-40.json=9 bench/bodies/details-300.json=1"
    ;;
  *) echo "unknown BENCH_PROFILE $PROFILE (default, scale)" >&2; exit 2 ;;
  esac
  PARTITIONS=${BENCH_PARTITIONS:-$profile_partitions}
  STREAMS=${BENCH_STREAMS:-$profile_streams}
  # The bodies sent, PATH=WEIGHT each (see bench/callback.lua); BENCH_BODY is
  # the one-body shorthand.
  if [ -n "${BENCH_BODY:-}" ]; then
    MIX=${BENCH_MIX:-$BENCH_BODY=1}
  else
    MIX=${BENCH_MIX:-$profile_mix}
  fi
  # BENCH_KAFKA_PROPERTIES ("KEY=VALUE;..."): librdkafka properties over the
  # bridge's defaults, given alike to the bridge (BRIDGE_ENV, for `env`) and to
  # the publishing reference (REFERENCE_PROPERTIES, its flags), so that a
  # producer setting is measured on both.
  KAFKA_PROPERTIES=${BENCH_KAFKA_PROPERTIES:-}
  # No shutdown delay: no load balancer has to take the bridge out first.
  # BENCH_BRIDGE_ENV ("KEY=VALUE ..."): the bridge's alone, such as
  # TOKIO_WORKER_THREADS=1 (the ceiling and oha run tokio too).
  BRIDGE_ENV=(BRIDGE_SHUTDOWN_DELAY_SECS=0)
  if [ -n "${BENCH_BRIDGE_ENV:-}" ]; then
    local setting settings
    read -ra settings <<<"$BENCH_BRIDGE_ENV"
    for setting in "${settings[@]}"; do
      [[ "$setting" == *=* ]] || die "BENCH_BRIDGE_ENV takes KEY=VALUE words, not $setting"
      BRIDGE_ENV+=("$setting")
    done
  fi
  REFERENCE_PROPERTIES=()
  if [ -n "$KAFKA_PROPERTIES" ]; then
    BRIDGE_ENV+=("BRIDGE_KAFKA_PROPERTIES=$KAFKA_PROPERTIES")
    local property properties
    IFS=';' read -ra properties <<<"$KAFKA_PROPERTIES"
    for property in "${properties[@]}"; do
      [ -z "$property" ] || REFERENCE_PROPERTIES+=(--property "$property")
    done
  fi
}

# Counts the records of each body of MIX with the bridge's `check` ($BRIDGE).
# Sets MIX_RECORDS (PATH=WEIGHT=RECORDS each, as bench/callback.lua takes
# them); RECORDS_PER_REQUEST and MIN_RECORDS, the records of a request on
# average and at least; BODY, the mix's first body (for readiness probes), and
# READY_RECORDS, its records.
count_mix() {
  local item path weight records weights=0 weighted=0
  MIX_RECORDS="" MIN_RECORDS=""
  for item in $MIX; do
    path=${item%=*} weight=${item##*=}
    [ -f "$path" ] && [ "$weight" -gt 0 ] 2>/dev/null || die "BENCH_MIX item $item is not PATH=WEIGHT"
    records=$("$BRIDGE" check "$path" 2>/dev/null | wc -l)
    [ "$records" -gt 0 ] || die "$path yields no record"
    log "$path yields $records records per request (weight $weight)"
    MIX_RECORDS+="${MIX_RECORDS:+ }$path=$weight=$records"
    weights=$((weights + weight)) weighted=$((weighted + weight * records))
    [ -n "$MIN_RECORDS" ] && [ "$MIN_RECORDS" -le "$records" ] || MIN_RECORDS=$records
  done
  [ "$STREAMS" -ge "$weights" ] || die "BENCH_STREAMS ($STREAMS) is below the mix's total weight ($weights): some bodies would never be sent"
  RECORDS_PER_REQUEST=$(calc '%.2f' "$weighted / $weights")
  # The readiness probes send the mix's first body.
  BODY=${MIX%%=*}
  READY_RECORDS=$("$BRIDGE" check "$BODY" 2>/dev/null | wc -l)
}

# --- measurements from /proc ---------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)

tree() { echo "$1"; descendants "$1"; }

# utime + stime, in clock ticks, summed over the given processes (all threads).
cpu_ticks() {
  local total=0 pid ticks
  for pid in "$@"; do
    ticks=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || true
    total=$((total + ${ticks:-0}))
  done
  echo "$total"
}

# Voluntary and involuntary context switches of the given processes, all
# their threads.
context_switches() {
  local pid
  for pid in "$@"; do
    cat /proc/"$pid"/task/*/status 2>/dev/null
  done | awk '$1 ~ /^(non)?voluntary_ctxt_switches:$/ {total += $2} END {print total + 0}'
}

# Busy CPU time of the whole machine, in clock ticks (all but idle and iowait).
machine_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# CPU time of this script's finished children (cutime + cstime), to measure wrk.
children_ticks() { sed 's/^.*) //' "/proc/$$/stat" | awk '{print $14 + $15}'; }

# A /proc/PID/status field in kB (VmHWM: peak RSS, VmRSS: current), summed.
mem_kb() {
  local field=$1 total=0 pid kb
  shift
  for pid in "$@"; do
    kb=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null) || true
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}

# Resets the peak RSS (VmHWM) to the current RSS, so each run reports its own peak.
reset_peak_rss() {
  local pid
  for pid in "$@"; do
    echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
  done
}

# printf-formats an awk expression: calc '%.2f' "1 / 3".
calc() { awk "BEGIN { printf \"$1\", ($2) }"; }

# Runs wrk; sets W_requests, W_duration_us, W_non2xx, W_connect, W_read, W_write,
# W_timeout, W_p50_us, W_p99_us, W_records, W_max_records (from the script's
# BENCH_RESULT line).
run_wrk() { # url connections seconds output
  sign_now
  BENCH_BODY=$BODY BENCH_MIX=${MIX_RECORDS:-} BENCH_STREAMS=$STREAMS BENCH_SIGN_T=$SIGN_T BENCH_SIGN=$SIGN \
    ${LOAD_ON[@]+"${LOAD_ON[@]}"} wrk -t"$THREADS" -c"$2" -d"${3}s" --timeout 10s --latency -s bench/callback.lua "$1" >"$4" 2>&1 ||
    die "wrk failed, see $4"
  local line
  line=$(grep '^BENCH_RESULT ' "$4") || die "no BENCH_RESULT line in $4"
  eval "$(echo "${line#BENCH_RESULT }" | sed 's/\([a-z0-9_]*\)=/W_\1=/g')"
}


# Installs wrk (Debian package) when missing.
ensure_wrk() {
  command -v wrk >/dev/null 2>&1 && return 0
  log "installing wrk (Debian package)"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq wrk) >"$LOGS/apt-wrk.log" 2>&1 ||
      die "could not install wrk, see $LOGS/apt-wrk.log"
  else
    die "wrk is missing: sudo apt-get install wrk"
  fi
}

# The commit measured, "+ uncommitted changes" when the code differs from it.
commit_label() {
  local commit
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if ! GIT_OPTIONAL_LOCKS=0 git diff --quiet HEAD -- src examples Cargo.toml Cargo.lock 2>/dev/null; then
    commit="$commit + uncommitted changes"
  fi
  echo "$commit"
}

# The open-loop load generator (bench/latency, bench/instructions,
# bench/threads, the paced ceiling of bench/run): oha, from crates.io,
# installed when missing. Sets OHA (its path) and OHA_VERSION.
OHA_VERSION=1.16.0
ensure_oha() {
  if ! oha --version 2>/dev/null | grep -q "$OHA_VERSION"; then
    log "installing oha $OHA_VERSION (cargo install, a few minutes once)"
    cargo install oha --version "$OHA_VERSION" --locked >"$LOGS/oha-install.log" 2>&1 ||
      die "could not install oha, see $LOGS/oha-install.log"
  fi
  OHA=$(command -v oha || echo "$HOME/.cargo/bin/oha")
}

# Drives $1 at $2 requests/s, latency corrected for coordinated omission (with
# $2 "closed": as fast as $3 connections go, each waiting for its answer), for $4
# s at $3 connections, sending signed_bodies; writes oha's JSON to $5 and prints
# "p50 p99 p99.9 max success_rate non_200 answered_per_s", the latencies in ms.
run_oha() { # url rate|closed connections seconds json
  local pace=(-q "$2" --latency-correction)
  [ "$2" = closed ] && pace=()
  signed_bodies
  ${LOAD_ON[@]+"${LOAD_ON[@]}"} "$OHA" --no-tui --output-format json -z "${4}s" "${pace[@]}" -c "$3" \
    -m POST -T application/json -Z "$LOGS/latency-bodies.jsonl" \
    "$1" >"$5" 2>"$5.err" || die "oha failed, see $5.err"
  python3 - "$5" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["latencyPercentiles"]
ms = lambda s: (s or 0) * 1000
print("%.2f %.2f %.2f %.2f %.4f %d %.0f" % (
    ms(p["p50"]), ms(p["p99"]), ms(p["p99.9"]), ms(r["summary"]["slowest"]),
    r["summary"]["successRate"], sum(r.get("statusCodeDistribution", {}).get(c, 0)
                                     for c in r.get("statusCodeDistribution", {}) if c != "200"),
    r["summary"]["requestsPerSec"] * r["summary"]["successRate"]))
PY
}

# The bodies for oha, one per line (it sends a line drawn at random for each
# request): the callbacks bench/callback.lua sends, one per stream id, each a
# body of the mix, signed with a fresh `t`.
signed_bodies() {
  sign_now
  python3 - "$STREAMS" "$SIGN_T" "$SIGN" "$MIX_RECORDS" >"$LOGS/latency-bodies.jsonl" <<'PY'
import json, sys
streams, t, sign, mix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4].split()
bodies = []
for item in mix:
    path, weight, _records = item.rsplit("=", 2)
    bodies.append((json.load(open(path)), int(weight)))
weights = sum(weight for _, weight in bodies)
def body_for(i):
    slot = (i - 1) % weights
    for body, weight in bodies:
        if slot < weight:
            return body
        slot -= weight
for i in range(1, streams + 1):
    body = dict(body_for(i), stream_id=f"bench-stream-{i}", t=t, sign=sign)
    print(json.dumps(body, separators=(",", ":")))
PY
}

# Apache Kafka for a benchmark: a cluster of BENCH_KAFKA_NODES nodes (1; 3
# replicates each topic three times, as production clusters do) by
# scripts/kafka, its data in $LOGS/kafka, ended on exit. Sets BROKERS,
# KAFKA_DIR and KAFKA_PIDS (one a node).
KAFKA_NODES=${BENCH_KAFKA_NODES:-1}
start_kafka() {
  local node
  KAFKA_DIR=$LOGS/kafka
  "$ROOT/scripts/kafka" down "$KAFKA_DIR" 2>/dev/null || true
  rm -rf "$KAFKA_DIR"
  # The brokers' stop-the-world pauses (their JVMs' safepoints: garbage
  # collections, mostly), a file a JVM, for broker_pauses.
  SAFEPOINTS=$LOGS/kafka-safepoints
  rm -rf "$SAFEPOINTS" && mkdir -p "$SAFEPOINTS"
  BROKERS=$(KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:-} -Xlog:safepoint:file=$SAFEPOINTS/%p.log:timemillis" \
    ${BROKER_ON[@]+"${BROKER_ON[@]}"} "$ROOT/scripts/kafka" start "$KAFKA_DIR" --nodes "$KAFKA_NODES") ||
    die "Apache Kafka did not start, see $KAFKA_DIR/*/server.log"
  KAFKA_PIDS=()
  for node in $(seq "$KAFKA_NODES"); do
    KAFKA_PIDS+=("$("$ROOT/scripts/kafka" pid "$KAFKA_DIR" "$node")")
  done
  KAFKA_STARTED+=("$KAFKA_DIR")
  log "Apache Kafka $(kafka_version), $(kafka_nodes), on $BROKERS (pids ${KAFKA_PIDS[*]})"
}

# The cluster, for a results file's header.
kafka_nodes() {
  if [ "$KAFKA_NODES" -eq 1 ]; then
    echo "one node"
  else
    echo "$KAFKA_NODES nodes, topics replicated $((KAFKA_NODES < 3 ? KAFKA_NODES : 3)) times"
  fi
}

# Fails the run when a broker has died, naming $1, what was running.
check_broker() { # what
  local pid
  for pid in "${KAFKA_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || die "Apache Kafka exited during the $1, see $KAFKA_DIR/*/server.log"
  done
}
KAFKA_STARTED=()

# Warms the brokers of start_kafka for $1 s with the publishing reference
# ($REFERENCE), closed-loop, sending the bodies of $2 (MIX) into a topic of its
# own. A fresh broker costs several times its warm CPU per record until its JIT
# has compiled the produce path (measured: 0.64 against 0.30 cores for the same
# records), which would load whatever runs first.
warm_broker() { # seconds mix
  log "the broker's warm-up: the publishing reference, closed-loop, $1 s"
  create_topics "bench.warmup.$RUN_ID" "$PARTITIONS"
  ${SERVICE_ON[@]+"${SERVICE_ON[@]}"} "$REFERENCE" --brokers "$BROKERS" --topic "bench.warmup.$RUN_ID" --seconds "$1" \
    --mix "$2" --streams "$STREAMS" ${REFERENCE_PROPERTIES[@]+"${REFERENCE_PROPERTIES[@]}"} \
    >/dev/null 2>>"$LOGS/reference.log" || die "the broker's warm-up failed, see $LOGS/reference.log"
}

# The brokers' stop-the-world pauses that ended between $1 and $2 (Unix ms):
# "longest/total" in ms, over all nodes. Each stops every request its broker
# has, and its garbage collector's threads take the machine's cores while it
# lasts.
broker_pauses() { # from_ms to_ms
  awk -v from="$1" -v to="$2" '
    match($0, /^\[[0-9]+ms\]/) && match($0, /Total: [0-9]+ ns/) {
      at = substr($1, 2) + 0
      ns = substr($0, RSTART + 7, RLENGTH - 10) + 0
      if (at >= from && at <= to) { total += ns; if (ns > longest) longest = ns }
    }
    END { printf "%.1f/%.1f\n", longest / 1e6, total / 1e6 }' "$SAFEPOINTS"/*.log
}

kafka_version() { sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/scripts/kafka-lib/pom.xml"; }

# Creates topics NAME[,NAME...] with $1 partitions on the cluster of start_kafka.
create_topics() { # names partitions
  "$ROOT/scripts/kafka" topic "$KAFKA_DIR" "$1" "$2" >>"$LOGS/topics.log" 2>&1 ||
    die "cannot create topics $1, see $LOGS/topics.log"
}

# The value of metric $2 (name with labels, as exposed) at $1 (a /metrics URL); 0
# when absent.
metric() {
  curl -s --max-time 5 "$1" | awk -v name="$2" '$1 == name {print $2; found = 1} END {if (!found) print 0}'
}

# Sets SIGN_T and SIGN: a CSS signature with CALLBACK_KEY, `t` ten minutes ahead
# as CSS sets it (the bridge refuses a `t` beyond its horizon), made anew for
# each load so that a long benchmark never outlives it.
sign_now() {
  SIGN_T=$(($(date +%s) + 600))
  SIGN=$(printf '%s%s' "$CALLBACK_KEY" "$SIGN_T" | md5sum | cut -d' ' -f1)
}
