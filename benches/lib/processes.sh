# Process control shared by the benchmark scripts (benches/load/run.sh,
# benches/failover/run.sh), sourced after each has set:
#   BENCH_NAME      the prefix of its log lines, e.g. bench-load
#   READY_TIMEOUT   seconds a process gets to accept connections
#   STOP_TIMEOUT    seconds a process gets to exit after SIGTERM
# and, optionally, START_BG_APPEND=true to append to log files rather than
# start them afresh (the failover benchmark restarts an origin into its log).

log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# The first line a tool prints about its version.
ver() { "$@" 2>&1 | head -n 1 || true; }

# Every process the script starts is recorded here (pid -> name) and is the
# only thing it ever signals. The pids are its own unreaped children, so they
# cannot be recycled while they are in this table.
declare -A STARTED=()
LAST_PID=

alive() {
    local state
    state=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

start_bg() { # name logfile cmd...
    local name=$1 logfile=$2
    shift 2
    if [[ ${START_BG_APPEND:-false} == true ]]; then
        "$@" >>"$logfile" 2>&1 </dev/null &
    else
        "$@" >"$logfile" 2>&1 </dev/null &
    fi
    LAST_PID=$!
    STARTED[$LAST_PID]=$name
}

signal_pid() { # signal pid: only to a process this script started and still holds
    [[ -n ${STARTED[$2]+x} ]] || die "refusing to signal pid $2: not started by this script"
    kill "-$1" "$2" 2>/dev/null || true
}

stop_pid() {
    local pid=$1 i
    [[ -n ${STARTED[$pid]+x} ]] || return 0
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        kill -CONT "$pid" 2>/dev/null || true # a frozen process must run to exit
        for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "${STARTED[$pid]} (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    { wait "$pid"; } 2>/dev/null || true # no "Killed" notice for a killed process
    unset "STARTED[$pid]"
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${!STARTED[@]}"; do
        log "stopping ${STARTED[$pid]} (pid $pid)"
        stop_pid "$pid"
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_in_use() {
    if command -v ss >/dev/null; then
        [[ -n $(ss -Htln "sport = :$1" 2>/dev/null) ]] && return 0
    fi
    port_open "$1"
}

wait_port() { # pid port name logfile
    local pid=$1 port=$2 name=$3 logfile=$4 i
    for ((i = 0; i < READY_TIMEOUT * 20; i++)); do
        if ! alive "$pid"; then
            tail -n 20 "$logfile" >&2 || true
            die "$name exited during startup (log: $logfile)"
        fi
        port_open "$port" && return 0
        sleep 0.05
    done
    tail -n 20 "$logfile" >&2 || true
    die "$name did not accept connections on 127.0.0.1:$port within ${READY_TIMEOUT}s (log: $logfile)"
}

wait_port_closed() { # port -> 0 once nothing accepts on it (bounded)
    local i
    for ((i = 0; i < READY_TIMEOUT * 20; i++)); do
        port_open "$1" || return 0
        sleep 0.05
    done
    return 1
}
