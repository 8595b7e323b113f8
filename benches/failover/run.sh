#!/usr/bin/env bash
# Failover benchmark: what clients see when one of three origin servers dies
# (scenario "close": killed, port closed) or freezes (scenario "hang": SIGSTOP, the
# kernel still accepts connections but nothing answers), for gatehouse, NGINX and
# HAProxy in front of the same three origins, on loopback only.
# See docs/benchmarks.md#failover.
#
#   benches/failover/run.sh
#
# Environment:
#   BENCH_DURATION     seconds of wrk load per run                 (default 20)
#   BENCH_CONNECTIONS  keep-alive connections for wrk              (default 32)
#   BENCH_THREADS      wrk threads                                 (default 2)
#   BENCH_PACE_MS      pause of each connection before each request, ms; 0 = full
#                      speed                                       (default 5)
#   BENCH_FAULT_AT     second of the run when origin 2 fails       (default 5)
#   BENCH_RECOVER_AT   second of the run when origin 2 comes back  (default 12)
#   BENCH_SCENARIOS    scenarios to run, space separated           (default "close hang")
#   BENCH_PROXIES      proxies to run, space separated             (default "gatehouse nginx haproxy")
#   BENCH_KILL_SIGNAL  KILL or TERM: how "close" stops origin 2    (default KILL)
#
# CPU layout: the proxy under test is pinned to CPU 0; the origins and wrk share
# CPU 1. One markdown table per scenario goes to stdout and to
# target/bench-failover/results.md; progress goes to stderr. Exit status: 0 when
# every run completed (failed requests are the measurement, not an error), 1 on a
# setup failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

# ---------------------------------------------------------------- parameters
DURATION=${BENCH_DURATION:-20}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-2}
PACE_MS=${BENCH_PACE_MS:-5}
FAULT_AT=${BENCH_FAULT_AT:-5}
RECOVER_AT=${BENCH_RECOVER_AT:-12}
SCENARIOS_RAW=${BENCH_SCENARIOS:-close hang}
PROXIES_RAW=${BENCH_PROXIES:-gatehouse nginx haproxy}
KILL_SIGNAL=${BENCH_KILL_SIGNAL:-KILL}

READY_TIMEOUT=10   # seconds a process gets to accept connections
STOP_TIMEOUT=10    # seconds a process gets to exit after SIGTERM before SIGKILL
SETTLE_SECS=2      # after the proxy is up: a few checked requests, then idle
WRK_TIMEOUT=10     # wrk's per-request timeout, above every proxy's own (2 s x 3 tries)
DIP_PCT=50         # a second of the run with under this share of the normal rate is a dip
HANG_DRAIN_SECS=1  # after SIGCONT, requests queued during the freeze are answered first

PROXY_CPU=0
LOAD_CPU=1

ORIGIN_PORTS=(18191 18192 18193)
GATEHOUSE_PORT=18181
GATEHOUSE_ADMIN_PORT=18184
NGINX_PORT=18182
HAPROXY_PORT=18183
FAULTY=2           # the origin (1-3) that fails

HERE="$ROOT/benches/failover"
GATEHOUSE_CONFIG=benches/failover/gatehouse.toml
OUT="$ROOT/target/bench-failover"
RESULTS="$OUT/results.md"
RUNS_TSV="$OUT/runs.tsv"

declare -A PROXY_PORT=([gatehouse]=$GATEHOUSE_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT)
declare -A PROXY_COMM=([gatehouse]=gatehouse [nginx]=nginx [haproxy]=haproxy)

BENCH_NAME=bench-failover
START_BG_APPEND=true # origin 2 restarts into the log it had
# shellcheck source=../lib/processes.sh
source "$ROOT/benches/lib/processes.sh"
is_uint "$DURATION" && ((DURATION >= 5 && DURATION <= 600)) ||
    die "BENCH_DURATION must be 5..600 seconds (got '$DURATION')"
is_uint "$CONNECTIONS" && ((CONNECTIONS >= 1 && CONNECTIONS <= 1000)) ||
    die "BENCH_CONNECTIONS must be 1..1000 (got '$CONNECTIONS')"
is_uint "$THREADS" && ((THREADS >= 1 && THREADS <= 16 && THREADS <= CONNECTIONS)) ||
    die "BENCH_THREADS must be 1..16 and at most BENCH_CONNECTIONS (got '$THREADS')"
is_uint "$PACE_MS" && ((PACE_MS <= 1000)) ||
    die "BENCH_PACE_MS must be 0..1000 milliseconds (got '$PACE_MS')"
is_uint "$FAULT_AT" && is_uint "$RECOVER_AT" &&
    ((FAULT_AT >= 1 && FAULT_AT < RECOVER_AT && RECOVER_AT < DURATION)) ||
    die "need 1 <= BENCH_FAULT_AT < BENCH_RECOVER_AT < BENCH_DURATION (got $FAULT_AT, $RECOVER_AT, $DURATION)"
case $KILL_SIGNAL in
    KILL | TERM) ;;
    *) die "BENCH_KILL_SIGNAL must be KILL or TERM (got '$KILL_SIGNAL')" ;;
esac

pick_words() { # kind allowed-words raw-words -> prints the unique valid words
    local kind=$1 allowed=$2 w seen=" "
    for w in $3; do
        [[ " $allowed " == *" $w "* ]] || die "unknown $kind '$w' (choose from: $allowed)"
        [[ $seen == *" $w "* ]] || { seen+="$w "; printf '%s\n' "$w"; }
    done
}
mapfile -t SCENARIOS < <(pick_words scenario "close hang" "$SCENARIOS_RAW")
mapfile -t PROXIES < <(pick_words proxy "gatehouse nginx haproxy" "$PROXIES_RAW")
((${#SCENARIOS[@]} > 0)) || die "BENCH_SCENARIOS selects no scenario"
((${#PROXIES[@]} > 0)) || die "BENCH_PROXIES selects no proxy"
selected() { [[ " ${PROXIES[*]} " == *" $1 "* ]]; }

# --------------------------------------------------------------- prerequisites
NGINX_BIN=$(command -v nginx || true)
[[ -n $NGINX_BIN ]] || NGINX_BIN=/usr/sbin/nginx
HAPROXY_BIN=$(command -v haproxy || true)
[[ -n $HAPROXY_BIN ]] || HAPROXY_BIN=/usr/sbin/haproxy
WRK_BIN=$(command -v wrk || true)
[[ -n $WRK_BIN ]] || WRK_BIN=/usr/bin/wrk
if [[ ! -x $NGINX_BIN || ! -x $HAPROXY_BIN || ! -x $WRK_BIN ]]; then
    echo "nginx, haproxy and wrk are required: apt-get install -y nginx haproxy wrk" >&2
    exit 1
fi
for tool in taskset curl timeout awk sed date; do
    command -v "$tool" >/dev/null || die "'$tool' is required but not installed"
done
(($(nproc --all 2>/dev/null || echo 1) >= 2)) || die "needs at least 2 CPUs (proxy on CPU $PROXY_CPU, origins+wrk on CPU $LOAD_CPU)"
for f in origin.conf.in nginx.conf.in haproxy.cfg.in gatehouse.toml status.lua; do
    [[ -f $HERE/$f ]] || die "missing $HERE/$f"
done


now_ns() { date +%s%N; }

sleep_until() { # t0_ns offset_seconds: sleep until t0 + offset (no-op if past)
    local left
    left=$(awk -v t0="$1" -v off="$2" -v now="$(now_ns)" \
        'BEGIN { d = (t0 / 1e9 + off) - now / 1e9; printf "%.3f", (d > 0) ? d : 0 }')
    sleep "$left"
}

# ----------------------------------------------------------------- workspace
[[ $OUT == "$ROOT/target/bench-failover" ]] || die "unexpected output directory $OUT"
rm -rf "$OUT/origin1" "$OUT/origin2" "$OUT/origin3" "$OUT/nginx" "$OUT/haproxy" \
    "$OUT/gatehouse" "$OUT/docroot" "$OUT/wrk" "$OUT/runs"
mkdir -p "$OUT"/{nginx,haproxy,gatehouse,docroot,wrk,runs}
for d in origin1 origin2 origin3 nginx; do
    mkdir -p "$OUT/$d"/{logs,tmp/body,tmp/proxy,tmp/fastcgi,tmp/uwsgi,tmp/scgi}
done

for port in "${ORIGIN_PORTS[@]}" "${PROXY_PORT[@]}" "$GATEHOUSE_ADMIN_PORT"; do
    if port_in_use "$port"; then
        ss -Htlnp "sport = :$port" >&2 2>/dev/null || true
        die "port 127.0.0.1:$port is already in use; stop whatever holds it and retry"
    fi
done

head -c 1024 /dev/zero | tr '\0' 'a' >"$OUT/docroot/1k"
printf 'ok\n' >"$OUT/docroot/healthz"

fill() { # template output key=value...
    local template=$1 output=$2 expr=() kv
    shift 2
    for kv in "$@"; do expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${expr[@]}" "$template" >"$output"
    ! grep -q '@[A-Z0-9]*@' "$output" || die "unfilled field in $output"
}

for i in 1 2 3; do
    fill "$HERE/origin.conf.in" "$OUT/origin$i/nginx.conf" \
        DIR="$OUT/origin$i" PORT="${ORIGIN_PORTS[i - 1]}" DOCROOT="$OUT/docroot"
    "$NGINX_BIN" -t -q -p "$OUT/origin$i" -e "$OUT/origin$i/logs/error.log" \
        -c "$OUT/origin$i/nginx.conf" -g 'daemon off;' ||
        die "origin $i nginx config is invalid ($OUT/origin$i/nginx.conf)"
done
fill "$HERE/nginx.conf.in" "$OUT/nginx/nginx.conf" DIR="$OUT/nginx" PORT="$NGINX_PORT" \
    ORIGIN1="${ORIGIN_PORTS[0]}" ORIGIN2="${ORIGIN_PORTS[1]}" ORIGIN3="${ORIGIN_PORTS[2]}"
fill "$HERE/haproxy.cfg.in" "$OUT/haproxy/haproxy.cfg" PORT="$HAPROXY_PORT" \
    ORIGIN1="${ORIGIN_PORTS[0]}" ORIGIN2="${ORIGIN_PORTS[1]}" ORIGIN3="${ORIGIN_PORTS[2]}"
if selected nginx; then
    "$NGINX_BIN" -t -q -p "$OUT/nginx" -e "$OUT/nginx/logs/error.log" -c "$OUT/nginx/nginx.conf" -g 'daemon off;' ||
        die "nginx config is invalid ($OUT/nginx/nginx.conf)"
fi
if selected haproxy; then
    "$HAPROXY_BIN" -c -q -f "$OUT/haproxy/haproxy.cfg" ||
        die "haproxy config is invalid ($OUT/haproxy/haproxy.cfg)"
fi

# gatehouse: build, then validate the settings. Settings the binary rejects (keys
# not known to this build) are reported in the table instead of stopping the run.
GATEHOUSE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/gatehouse"
GATEHOUSE_REJECTED=
if selected gatehouse; then
    for port in "$GATEHOUSE_PORT" "$GATEHOUSE_ADMIN_PORT" "${ORIGIN_PORTS[@]}"; do
        grep -q "127.0.0.1:$port" "$GATEHOUSE_CONFIG" ||
            die "$GATEHOUSE_CONFIG must use 127.0.0.1:$port (see the ports in run.sh)"
    done
    log "building gatehouse (cargo build --release)"
    cargo build --release >&2 || die "cargo build --release failed"
    [[ -x $GATEHOUSE_BIN ]] || die "no gatehouse binary at $GATEHOUSE_BIN after the build"
    if ! "$GATEHOUSE_BIN" --config "$GATEHOUSE_CONFIG" --check >"$OUT/gatehouse/check.log" 2>&1; then
        GATEHOUSE_REJECTED=$(grep -v '^\s*$' "$OUT/gatehouse/check.log" | head -n 1 | tr '|\t' '/ ')
        log "gatehouse rejects $GATEHOUSE_CONFIG: $GATEHOUSE_REJECTED"
    fi
fi

# ------------------------------------------------------------------- helpers
declare -A ORIGIN_PID=()

start_origin() { # n
    local n=$1
    start_bg "origin$n" "$OUT/origin$n/run.log" taskset -c "$LOAD_CPU" \
        "$NGINX_BIN" -p "$OUT/origin$n" -e "$OUT/origin$n/logs/error.log" \
        -c "$OUT/origin$n/nginx.conf" -g 'daemon off;'
    ORIGIN_PID[$n]=$LAST_PID
    wait_port "$LAST_PID" "${ORIGIN_PORTS[n - 1]}" "origin $n" "$OUT/origin$n/logs/error.log"
}

start_proxy() { # proxy -> LAST_PID
    local proxy=$1 logfile="$OUT/$1/run.log"
    case $proxy in
        gatehouse)
            start_bg gatehouse "$logfile" env RUST_LOG=warn \
                taskset -c "$PROXY_CPU" "$GATEHOUSE_BIN" --config "$GATEHOUSE_CONFIG" ;;
        nginx)
            start_bg nginx "$logfile" taskset -c "$PROXY_CPU" \
                "$NGINX_BIN" -p "$OUT/nginx" -e "$OUT/nginx/logs/error.log" \
                -c "$OUT/nginx/nginx.conf" -g 'daemon off;' ;;
        haproxy)
            start_bg haproxy "$logfile" taskset -c "$PROXY_CPU" \
                "$HAPROXY_BIN" -db -f "$OUT/haproxy/haproxy.cfg" ;;
    esac
    wait_port "$LAST_PID" "${PROXY_PORT[$proxy]}" "$proxy" "$logfile"
    local comm
    comm=$(cat "/proc/$LAST_PID/comm" 2>/dev/null || true)
    [[ $comm == "${PROXY_COMM[$proxy]}"* ]] ||
        die "pid $LAST_PID is '$comm', expected the $proxy process itself"
}

check_get() { # port -> "ok" or what is wrong
    local got
    got=$(curl -sS -o /dev/null --max-time 5 -w '%{http_code} %{size_download}' \
        "http://127.0.0.1:$1/1k" 2>&1) || true
    if [[ $got == "200 1024" ]]; then echo ok; else echo "bad response (${got//[$'\n\t']/ })"; fi
}

# origin_log n from_epoch to_epoch -> "count first_epoch" of GETs of /1k logged in [from, to)
origin_log() {
    awk -v from="$2" -v to="$3" '
        $3 == "/1k" && $1 >= from && $1 < to { n++; if (first == "" || $1 < first) first = $1 }
        END { printf "%d %s\n", n, (first == "") ? "-" : first }' \
        "$OUT/origin$1/logs/access.log" 2>/dev/null || echo "0 -"
}

# failure_seconds t0_epoch wrk_output -> "5, 7-8": the seconds of the run (0 = when
# wrk started) with failed responses. The wrk script counts per wall-clock second;
# each is placed in the run second it overlaps most.
failure_seconds() {
    awk -v t0="$1" -v last="$((DURATION + 30))" '
        $1 == "failover" && $2 == "second" && $5 > 0 {
            i = int($3 + 0.5 - t0); if (i < 0) i = 0; if (i > last) i = last; s[i] = 1
        }
        END {
            out = ""; start = -1; prev = -2
            for (i = 0; i <= last; i++) {
                if (!(i in s)) continue
                if (i != prev + 1) {
                    if (start >= 0) out = out (out == "" ? "" : ", ") (start == prev ? start : start "-" prev)
                    start = i
                }
                prev = i
            }
            if (start >= 0) out = out (out == "" ? "" : ", ") (start == prev ? start : start "-" prev)
            print (out == "") ? "-" : out
        }' "$2"
}

# rate_dip t0_epoch wrk_output -> "dip_seconds lowest_pct normal_rate": the normal rate is the
# median of the responses per second in the full seconds before the fault; the
# full seconds from the fault to the end of the run with under DIP_PCT% of it are
# counted, and the lowest second is given as a percentage of it.
rate_dip() {
    awk -v t0="$1" -v fault="$FAULT_AT" -v dur="$DURATION" -v pct="$DIP_PCT" '
        $1 == "failover" && $2 == "second" { n[$3 + 0] = $4 }
        END {
            first = int(t0) + 1
            k = 0
            for (sec = first; sec + 1 <= t0 + fault; sec++) v[++k] = n[sec] + 0
            for (i = 2; i <= k; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
            if (k == 0) { print "- - -"; exit }
            normal = (k % 2) ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
            if (normal <= 0) { print "- - -"; exit }
            dips = 0; low = -1
            for (sec = first; sec + 1 <= t0 + dur; sec++) {
                if (sec + 1 <= t0 + fault) continue
                r = 100 * (n[sec] + 0) / normal
                if (r < pct) dips++
                if (low < 0 || r < low) low = r
            }
            printf "%d %.0f %.0f\n", dips, (low < 0) ? 100 : low, normal
        }' "$2"
}

# --------------------------------------------------------------------- runs
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
awk -v l="${LOAD_BEFORE%% *}" 'BEGIN { exit !(l >= 0.5) }' &&
    log "warning: load average is $LOAD_BEFORE before starting; other work on this machine will skew the numbers"

printf 'scenario\tproxy\trequests\tfailed\tfailed_pct\tstatus_4xx\tstatus_5xx\tcodes\tconnect\tread\twrite\twrk_timeout\tdip_seconds\tlowest_pct\tnormal_rps\tmax_ms\tfailure_seconds\torigin_requests\tback_count\tback_first_s\tnote\tanswered_in_drain_window\n' >"$RUNS_TSV"

total_runs=$((${#SCENARIOS[@]} * ${#PROXIES[@]}))
run_no=0
for s in "${SCENARIOS[@]}"; do
    for p in "${PROXIES[@]}"; do
        run_no=$((run_no + 1))
        tag="$s-$p"
        if [[ $p == gatehouse && -n $GATEHOUSE_REJECTED ]]; then
            log "[$run_no/$total_runs] $p $s: skipped, settings rejected"
            printf '%s\t%s\t0\t0\t0\t0\t0\t-\t0\t0\t0\t0\t-\t-\t-\t-1\t-\t-\t0\t-\tsettings rejected: %s\t-\n' \
                "$s" "$p" "$GATEHOUSE_REJECTED" >>"$RUNS_TSV"
            continue
        fi
        log "[$run_no/$total_runs] $p, scenario $s: ${DURATION}s of load, origin $FAULTY fails at ${FAULT_AT}s, back at ${RECOVER_AT}s"
        notes=()

        for n in 1 2 3; do
            : >"$OUT/origin$n/logs/access.log"
            start_origin "$n"
        done
        start_proxy "$p"
        proxy_pid=$LAST_PID
        for ((i = 0; i < 6; i++)); do # two rounds over the three origins
            check=$(check_get "${PROXY_PORT[$p]}")
            [[ $check == ok ]] || die "$p does not serve /1k before the fault: $check"
        done
        sleep "$SETTLE_SECS"

        wrk_out="$OUT/wrk/$tag.txt"
        t0=$(now_ns)
        start_bg wrk "$wrk_out" env FAILOVER_PACE_MS="$PACE_MS" timeout -k 5 $((DURATION + 30)) \
            taskset -c "$LOAD_CPU" "$WRK_BIN" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION"s \
            --timeout "${WRK_TIMEOUT}s" --latency -s "$HERE/status.lua" "http://127.0.0.1:${PROXY_PORT[$p]}/1k"
        wrk_pid=$LAST_PID

        sleep_until "$t0" "$FAULT_AT"
        faulty_pid=${ORIGIN_PID[$FAULTY]}
        if [[ $s == close ]]; then
            [[ -n ${STARTED[$faulty_pid]+x} ]] || die "origin $FAULTY is not running"
            { # reap it at once, without bash's "Killed" notice
                signal_pid "$KILL_SIGNAL" "$faulty_pid"
                t_fault=$(now_ns)
                stop_pid "$faulty_pid"
            } 2>/dev/null
            wait_port_closed "${ORIGIN_PORTS[FAULTY - 1]}" || notes+=("origin port still open after SIG$KILL_SIGNAL")
            log "  origin $FAULTY (pid $faulty_pid) killed with SIG$KILL_SIGNAL at +$(awk -v a="$t0" -v b="$t_fault" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')s"
        else
            signal_pid STOP "$faulty_pid"
            t_fault=$(now_ns)
            log "  origin $FAULTY (pid $faulty_pid) frozen with SIGSTOP at +$(awk -v a="$t0" -v b="$t_fault" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')s"
        fi

        sleep_until "$t0" "$RECOVER_AT"
        if [[ $s == close ]]; then
            t_back=$(now_ns)
            start_origin "$FAULTY"
            log "  origin $FAULTY restarted (pid ${ORIGIN_PID[$FAULTY]}) at +$(awk -v a="$t0" -v b="$t_back" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')s"
        else
            t_back=$(now_ns) # before the signal: the origin answers at once
            signal_pid CONT "$faulty_pid"
            log "  origin $FAULTY resumed with SIGCONT at +$(awk -v a="$t0" -v b="$t_back" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')s"
        fi

        wrk_rc=0
        wait "$wrk_pid" || wrk_rc=$?
        unset "STARTED[$wrk_pid]"
        t_end=$(now_ns)
        ((wrk_rc == 0)) || notes+=("wrk exit $wrk_rc")
        alive "$proxy_pid" || notes+=("proxy exited during the run")
        stop_pid "$proxy_pid"
        for n in 1 2 3; do stop_pid "${ORIGIN_PID[$n]}"; done
        cp "$OUT/origin$FAULTY/logs/access.log" "$OUT/runs/$tag-origin$FAULTY.log"

        # Client side, from the wrk script's lines.
        read -r requests c4 c5 e_connect e_read e_write e_timeout lmax < <(awk '
            $1 == "failover" && $2 == "requests" { r = $3 }
            $1 == "failover" && $2 == "class" && $3 == "4xx" { c4 = $4 }
            $1 == "failover" && $2 == "class" && $3 == "5xx" { c5 = $4 }
            $1 == "failover" && $2 == "errors" { ec = $4; er = $6; ew = $8; et = $12 }
            $1 == "failover" && $2 == "latency_max_us" { mx = $3 / 1000 }
            END { printf "%d %d %d %d %d %d %d %.1f\n", r, c4, c5, ec, er, ew, et, mx }' "$wrk_out")
        grep -q '^failover requests' "$wrk_out" || notes+=("no summary from the wrk script")
        codes=$(awk '$1 == "failover" && $2 == "code" { printf "%s%s×%s", sep, $3, $4; sep = " " }' "$wrk_out")
        failed=$((c4 + c5 + e_connect + e_read + e_write + e_timeout))
        pct=$(awk -v f="$failed" -v r="$requests" 'BEGIN { printf "%.3f", (r > 0) ? 100 * f / r : 0 }')
        t0_s=$(awk -v t="$t0" 'BEGIN { printf "%.3f", t / 1e9 }')
        fsecs=$(failure_seconds "$t0_s" "$wrk_out")
        read -r dips lowest normal < <(rate_dip "$t0_s" "$wrk_out")

        # Origin side: requests per origin during the run, and origin 2's after it came back.
        from=$(awk -v t="$t0" 'BEGIN { printf "%.3f", t / 1e9 }')
        to=$(awk -v t="$t_end" 'BEGIN { printf "%.3f", t / 1e9 + 1 }')
        per_origin=()
        for n in 1 2 3; do
            read -r cnt _ < <(origin_log "$n" "$from" "$to")
            per_origin+=("$cnt")
        done
        if [[ $s == close ]]; then
            back_from=$(awk -v t="$t_back" 'BEGIN { printf "%.3f", t / 1e9 }')
        else
            back_from=$(awk -v t="$t_back" -v d="$HANG_DRAIN_SECS" 'BEGIN { printf "%.3f", t / 1e9 + d }')
        fi
        read -r back_count back_first < <(origin_log "$FAULTY" "$back_from" "$to")
        held=- # hang: GETs origin 2 answered in the drain window (held ones, and live ones if any)
        if [[ $s == hang ]]; then
            read -r held _ < <(origin_log "$FAULTY" "$(awk -v t="$t_back" 'BEGIN { printf "%.3f", t / 1e9 }')" "$back_from")
        fi
        back_first_s=-
        if [[ $back_first != - ]]; then
            back_first_s=$(awk -v f="$back_first" -v t="$t_back" 'BEGIN { printf "%.1f", f - t / 1e9 }')
        fi

        note_text=ok
        if ((${#notes[@]} > 0)); then
            note_text=$(printf '%s; ' "${notes[@]}")
            note_text=${note_text%; }
            log "  PROBLEM: $note_text"
        fi
        log "  $requests requests, $failed failed ($pct%): ${codes:-no error statuses}; socket errors connect $e_connect read $e_read write $e_write timeout $e_timeout; failures at s ${fsecs}; ${dips} s under ${DIP_PCT}% of the normal rate (lowest ${lowest}%); slowest ${lmax} ms"
        log "  requests per origin: ${per_origin[*]}; origin $FAULTY after it came back: $back_count (first at +${back_first_s}s); answered in the ${HANG_DRAIN_SECS}s after SIGCONT: $held"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
            "$s" "$p" "$requests" "$failed" "$pct" "$c4" "$c5" "${codes:--}" "$e_connect" "$e_read" \
            "$e_write" "$e_timeout" "$dips" "$lowest" "$normal" "$lmax" "$fsecs" "${per_origin[*]}" \
            "$back_count" "$back_first_s" "$note_text" "$held" >>"$RUNS_TSV"
    done
done

# -------------------------------------------------------------------- report
if selected gatehouse; then
    if git_rev=$(git rev-parse --short HEAD 2>/dev/null); then
        git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || git_rev="$git_rev + uncommitted changes"
    else
        git_rev="no commit yet"
    fi
else
    git_rev="not run"
fi
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)

{
    echo "## Failover benchmark results"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(uname -sr), ${cpu_model:-unknown CPU}, $(nproc --all) CPUs"
    echo "- gatehouse: $git_rev; $(ver "$NGINX_BIN" -v); $(ver "$HAPROXY_BIN" -v | sed 's/ - https.*//'); $(ver "$WRK_BIN" -v | awk '{ print $1, $2 }')"
    echo "- wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --timeout ${WRK_TIMEOUT}s, each connection pausing ${PACE_MS} ms before each request, GET /1k (1,024 bytes) round robin over 3 origins; origin $FAULTY fails at ${FAULT_AT}s and comes back at ${RECOVER_AT}s; proxy on CPU $PROXY_CPU, origins + wrk on CPU $LOAD_CPU"
    echo "- Load average (1/5/15 min) before the run: $LOAD_BEFORE"
    awk -F'\t' -v scenarios="${SCENARIOS[*]}" -v proxies="${PROXIES[*]}" -v conns="$CONNECTIONS" \
        -v sig="$KILL_SIGNAL" -v dip="$DIP_PCT" -v drain="$HANG_DRAIN_SECS" -v faulty="$FAULTY" '
    NR == 1 { next }
    { row[$1, $2] = $0 }
    END {
        title["close"] = "Scenario close: origin " faulty " killed (SIG" sig ", port closed), then restarted"
        title["hang"] = "Scenario hang: origin " faulty " frozen (SIGSTOP, connections accepted, no answers), then resumed (SIGCONT)"
        ns = split(scenarios, S, " "); np = split(proxies, P, " ")
        for (i = 1; i <= ns; i++) {
            s = S[i]
            print ""
            print "### " title[s]
            print ""
            held = ""
            print "| Proxy | Requests | Failed | Failed % | Failures | Failures at (s) | Seconds under " dip "% rate (lowest) | Slowest ms |" held " Origin " faulty " served again |"
            print "|---|---:|---:|---:|---|---|---|---:|---|"
            for (j = 1; j <= np; j++) {
                p = P[j]
                if (!((s, p) in row)) continue
                split(row[s, p], f, "\t")
                if (f[21] ~ /^settings rejected/) {
                    printf "| %s | n/a | n/a | n/a | %s | | | | |\n", p, f[21]
                    continue
                }
                kinds = ""
                if (f[8] != "-") kinds = f[8]
                if (f[9] > 0) kinds = kinds (kinds == "" ? "" : ", ") "connect " f[9]
                if (f[10] > 0) kinds = kinds (kinds == "" ? "" : ", ") "read " f[10]
                if (f[11] > 0) kinds = kinds (kinds == "" ? "" : ", ") "write " f[11]
                if (f[12] > 0) kinds = kinds (kinds == "" ? "" : ", ") "client timeout " f[12]
                if (kinds == "") kinds = "none"
                if (f[19] > 0) {
                    back = "yes, " f[19] " req"
                    if (s == "close") back = back " (first +" f[20] " s)"
                } else back = "no"
                name = p
                if (f[21] != "ok") name = p " ⚠ " f[21]
                printf "| %s | %d | %d | %.2f | %s | %s | %s (%s%%) | %.0f |%s %s |\n", name, f[3], f[4], f[5], kinds, f[17], f[13], f[14], f[16], "", back
            }
            print ""
            if (s == "close")
                print "Origin " faulty " served again: GETs in its access log after the restart."
            else {
                print "Origin " faulty " served again: GETs in its access log from " drain " s after SIGCONT (the requests queued during the freeze are answered in the first moments and are not counted)."
                print "Without retries, expect about " conns " failed requests per response timeout: within milliseconds of the freeze every one of the " conns " client connections is waiting on the frozen origin."
            }
        }
    }' "$RUNS_TSV"
    echo
    echo "Failed = responses with status ≥ 400 + wrk socket errors (connect, read, write, timeout). Failures at (s): seconds of the run (0 = start of load) with failed responses. Seconds under ${DIP_PCT}% rate: full seconds after the fault with fewer than ${DIP_PCT}% of the responses per second seen before it (median), and the lowest second as a percentage of that rate. Slowest: wrk's maximum latency."
} >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
cat "$RESULTS"
log "results: $RESULTS (per-run data: $RUNS_TSV, raw wrk output: $OUT/wrk/, origin $FAULTY logs: $OUT/runs/)"
