#!/usr/bin/env bash
# Side-by-side load benchmark: gatehouse vs NGINX vs HAProxy, in front of the
# same NGINX origin, on loopback only. See docs/benchmarks.md.
#
#   benches/load/run.sh
#
# Environment:
#   BENCH_DURATION     seconds per measured wrk run      (default 10)
#   BENCH_ROUNDS       interleaved rounds                (default 3)
#   BENCH_CONNECTIONS  keep-alive connections for wrk    (default 64)
#   BENCH_PROXIES      proxies to run, space separated   (default "gatehouse nginx haproxy")
#                      also: gatehouse-sticky (cookie session persistence, the client
#                      sends its gh_srv cookie back) and gatehouse-sticky-nocookie (the
#                      same gatehouse, a client that never does: a new cookie per response),
#                      gatehouse-secure (a hardened [security] section that admits the load:
#                      the cost of the checks), and gatehouse-gzip and nginx-gzip (gzip level 5
#                      on a 64 KiB HTML page, a scenario of their own; wrk asks for gzip),
#                      and gatehouse-tls and nginx-tls (TLS termination with the same test
#                      certificate and Mozilla intermediate settings, scenarios of their own:
#                      the 1 KiB GET over keep-alive HTTPS, the same with a new TLS connection
#                      per request, and over HTTP/2 with h2load when it is installed)
#                      also, with BENCH_BASELINE_BIN: gatehouse-baseline and
#                      gatehouse-tls-baseline (the baseline binary, as gatehouse and gatehouse-tls)
#   BENCH_BASELINE_BIN an older gatehouse binary to run beside the current build, in the same
#                      rounds: its proxies read the same TOML files with only the ports
#                      changed (default: unset, no baseline; when set and BENCH_PROXIES is
#                      not, the default proxies are "gatehouse gatehouse-baseline nginx haproxy")
#
# CPU layout: the proxy under test is pinned to CPU 0; the origin and wrk share CPU 1.
# The markdown table goes to stdout and to target/bench-load/results.md; progress
# goes to stderr. Exit status: 0 on success, 3 if any proxy returned errors (the
# table is still written), 1 on a setup failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# A relative BENCH_BASELINE_BIN is relative to where the script was started, not to ROOT.
BASELINE_BIN=${BENCH_BASELINE_BIN-}
[[ -z $BASELINE_BIN || $BASELINE_BIN == /* ]] || BASELINE_BIN="$PWD/$BASELINE_BIN"
cd "$ROOT"

# ---------------------------------------------------------------- parameters
DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
if [[ -n $BASELINE_BIN ]]; then
    PROXIES_RAW=${BENCH_PROXIES:-gatehouse gatehouse-baseline nginx haproxy}
else
    PROXIES_RAW=${BENCH_PROXIES:-gatehouse nginx haproxy}
fi

WARMUP_SECS=2      # warm-up before each measured run, discarded
IDLE_SECS=1        # idle time between "port is open" and reading idle RSS
READY_TIMEOUT=10   # seconds a process gets to accept connections
STOP_TIMEOUT=10    # seconds a process gets to exit after SIGTERM before SIGKILL

PROXY_CPU=0
LOAD_CPU=1

ORIGIN_PORT=18090
GATEHOUSE_PORT=18081
NGINX_PORT=18082
HAPROXY_PORT=18083
GATEHOUSE_STICKY_PORT=18084
GATEHOUSE_SECURE_PORT=18085
GATEHOUSE_GZIP_PORT=18086
NGINX_GZIP_PORT=18087
GATEHOUSE_TLS_PORT=18088       # TLS; gatehouse-tls.toml's plain listener is 18092
NGINX_TLS_PORT=18089
# The baseline's: the same settings files with these ports in place of 18081, 18088 and 18092.
GATEHOUSE_BASELINE_PORT=18093
GATEHOUSE_TLS_BASELINE_PORT=18094       # TLS; its plain listener is 18095
GATEHOUSE_TLS_BASELINE_PLAIN_PORT=18095
GATEHOUSE_TLS_PLAIN_PORT=18092

GATEHOUSE_CONFIG=benches/load/gatehouse.toml
GATEHOUSE_STICKY_CONFIG=benches/load/gatehouse-sticky.toml
GATEHOUSE_SECURE_CONFIG=benches/load/gatehouse-secure.toml
GATEHOUSE_GZIP_CONFIG=benches/load/gatehouse-gzip.toml
GATEHOUSE_TLS_CONFIG=benches/load/gatehouse-tls.toml
STICKY_COOKIE=gh_srv
OUT="$ROOT/target/bench-load"
RESULTS="$OUT/results.md"
RUNS_TSV="$OUT/runs.tsv"

# The standard scenarios, run by every proxy except the gzip ones, which run only the
# GZIP_SCENARIO: an HTML page (text/html from the origin) fetched with Accept-Encoding: gzip.
SCENARIOS=(1k 64k)
GZIP_SCENARIO=page.html
# The TLS proxies run only the TLS scenarios, all on the 1 KiB page: keep-alive HTTPS (wrk),
# a new TLS connection per request with wrk (Connection: close; wrk keeps each connection's
# TLS session and resumes it on the next connection, so these are resumed handshakes), a new
# connection per request with a full handshake (openssl s_time -new, which never resumes,
# TLS_FULL_CLIENTS of them at once), and HTTP/2 (h2load, one stream per connection, when
# h2load is installed).
TLS_SCENARIOS=(tls-1k tls-new tls-full)
TLS_FULL_CLIENTS=16
declare -A SCENARIO_BYTES=([1k]=1024 [64k]=65536 [page.html]=65536 [tls-1k]=1024 [tls-new]=1024 [tls-full]=1024 [tls-h2]=1024)
declare -A SCENARIO_LABEL=([1k]="1 KiB GET" [64k]="64 KiB GET" [page.html]="64 KiB HTML, gzip"
    [tls-1k]="1 KiB GET, HTTPS keep-alive" [tls-new]="1 KiB GET, new connection each, resumed TLS"
    [tls-full]="1 KiB GET, new connection each, full TLS handshake" [tls-h2]="1 KiB GET, HTTP/2 over TLS")
declare -A SCENARIO_PATH=([1k]=1k [64k]=64k [page.html]=page.html [tls-1k]=1k [tls-new]=1k [tls-full]=1k [tls-h2]=1k)
declare -A PROXY_PORT=([gatehouse]=$GATEHOUSE_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT
    [gatehouse-sticky]=$GATEHOUSE_STICKY_PORT [gatehouse-sticky-nocookie]=$GATEHOUSE_STICKY_PORT
    [gatehouse-secure]=$GATEHOUSE_SECURE_PORT [gatehouse-gzip]=$GATEHOUSE_GZIP_PORT
    [nginx-gzip]=$NGINX_GZIP_PORT [gatehouse-tls]=$GATEHOUSE_TLS_PORT [nginx-tls]=$NGINX_TLS_PORT
    [gatehouse-baseline]=$GATEHOUSE_BASELINE_PORT [gatehouse-tls-baseline]=$GATEHOUSE_TLS_BASELINE_PORT)
declare -A PROXY_COMM=([gatehouse]=gatehouse [nginx]=nginx [haproxy]=haproxy
    [gatehouse-sticky]=gatehouse [gatehouse-sticky-nocookie]=gatehouse
    [gatehouse-secure]=gatehouse [gatehouse-gzip]=gatehouse [nginx-gzip]=nginx
    [gatehouse-tls]=gatehouse [nginx-tls]=nginx)
# The kernel names a process after the first 15 bytes of the file it runs.
BASELINE_COMM=$(basename -- "${BASELINE_BIN:-gatehouse}")
PROXY_COMM[gatehouse-baseline]=${BASELINE_COMM:0:15}
PROXY_COMM[gatehouse-tls-baseline]=${BASELINE_COMM:0:15}
is_gzip() { [[ $1 == gatehouse-gzip || $1 == nginx-gzip ]]; }
is_tls() { [[ $1 == gatehouse-tls || $1 == nginx-tls || $1 == gatehouse-tls-baseline ]]; }
is_tls_scenario() { [[ $1 == tls-* ]]; }

BENCH_NAME=bench-load
# shellcheck source=../lib/processes.sh
source "$ROOT/benches/lib/processes.sh"
is_uint "$DURATION" && ((DURATION >= 1 && DURATION <= 3600)) ||
    die "BENCH_DURATION must be 1..3600 seconds (got '$DURATION')"
is_uint "$ROUNDS" && ((ROUNDS >= 1 && ROUNDS <= 50)) ||
    die "BENCH_ROUNDS must be 1..50 (got '$ROUNDS')"
is_uint "$CONNECTIONS" && ((CONNECTIONS >= 1 && CONNECTIONS <= 10000)) ||
    die "BENCH_CONNECTIONS must be 1..10000 (got '$CONNECTIONS')"

PROXIES=()
for p in $PROXIES_RAW; do
    case $p in
        gatehouse | nginx | haproxy | gatehouse-sticky | gatehouse-sticky-nocookie | gatehouse-secure | \
            gatehouse-gzip | nginx-gzip | gatehouse-tls | nginx-tls) ;;
        gatehouse-baseline | gatehouse-tls-baseline)
            [[ -n $BASELINE_BIN ]] ||
                die "$p runs the gatehouse binary named by BENCH_BASELINE_BIN, which is not set (BENCH_BASELINE_BIN=/path/to/older/gatehouse)" ;;
        *) die "unknown proxy '$p' in BENCH_PROXIES (choose from: gatehouse nginx haproxy gatehouse-sticky gatehouse-sticky-nocookie gatehouse-secure gatehouse-gzip nginx-gzip gatehouse-tls nginx-tls gatehouse-baseline gatehouse-tls-baseline)" ;;
    esac
    [[ " ${PROXIES[*]-} " == *" $p "* ]] || PROXIES+=("$p")
done
((${#PROXIES[@]} > 0)) || die "BENCH_PROXIES selects no proxy"
selected() { [[ " ${PROXIES[*]} " == *" $1 "* ]]; }
STICKY_SELECTED=false
if selected gatehouse-sticky || selected gatehouse-sticky-nocookie; then STICKY_SELECTED=true; fi
GZIP_SELECTED=false
if selected gatehouse-gzip || selected nginx-gzip; then GZIP_SELECTED=true; fi
GATEHOUSE_SELECTED=$STICKY_SELECTED
TLS_SELECTED=false
if selected gatehouse-tls || selected nginx-tls || selected gatehouse-tls-baseline; then TLS_SELECTED=true; fi
BASELINE_SELECTED=false
if selected gatehouse-baseline || selected gatehouse-tls-baseline; then BASELINE_SELECTED=true; fi
if [[ -n $BASELINE_BIN ]]; then
    [[ -f $BASELINE_BIN && -x $BASELINE_BIN ]] ||
        die "BENCH_BASELINE_BIN=$BASELINE_BIN is not an executable file"
    $BASELINE_SELECTED ||
        log "warning: BENCH_BASELINE_BIN is set but BENCH_PROXIES selects neither gatehouse-baseline nor gatehouse-tls-baseline: the baseline is not run"
fi
if selected gatehouse || selected gatehouse-secure || selected gatehouse-gzip || selected gatehouse-tls; then
    GATEHOUSE_SELECTED=true
fi
H2LOAD_BIN=$(command -v h2load || true)
if $TLS_SELECTED && [[ -n $H2LOAD_BIN ]]; then TLS_SCENARIOS+=(tls-h2); fi
# Scenarios run: the standard ones when any proxy other than the gzip and TLS ones is
# selected, the gzip one when a gzip proxy is, the TLS ones when a TLS proxy is.
RUN_SCENARIOS=()
for p in "${PROXIES[@]}"; do
    if ! is_gzip "$p" && ! is_tls "$p"; then RUN_SCENARIOS=("${SCENARIOS[@]}"); break; fi
done
if $GZIP_SELECTED; then RUN_SCENARIOS+=("$GZIP_SCENARIO"); fi
if $TLS_SELECTED; then RUN_SCENARIOS+=("${TLS_SCENARIOS[@]}"); fi
proxy_runs() { # proxy scenario -> whether that proxy runs that scenario
    if is_gzip "$1"; then
        [[ $2 == "$GZIP_SCENARIO" ]]
    elif is_tls "$1"; then
        is_tls_scenario "$2"
    else
        [[ $2 != "$GZIP_SCENARIO" ]] && ! is_tls_scenario "$2"
    fi
}

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
for tool in taskset curl timeout getconf awk; do
    command -v "$tool" >/dev/null || die "'$tool' is required but not installed"
done
if $TLS_SELECTED; then
    command -v openssl >/dev/null || die "'openssl' is required for the TLS scenarios but not installed"
    [[ -n $H2LOAD_BIN ]] || log "h2load not found (apt-get install -y nghttp2-client): the HTTP/2 scenario is not run"
fi
if $GZIP_SELECTED; then
    for tool in gzip cmp; do
        command -v "$tool" >/dev/null || die "'$tool' is required for the gzip scenario but not installed"
    done
fi
(($(nproc --all 2>/dev/null || echo 1) >= 2)) || die "needs at least 2 CPUs (proxy on CPU $PROXY_CPU, origin+wrk on CPU $LOAD_CPU)"
CLK_TCK=$(getconf CLK_TCK)
is_uint "$CLK_TCK" && ((CLK_TCK > 0)) || die "getconf CLK_TCK returned '$CLK_TCK'"


cpu_ticks() { # utime + stime of the whole process, in clock ticks
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
status_kb() { # pid field -> kB
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

# ----------------------------------------------------------------- workspace
[[ $OUT == "$ROOT/target/bench-load" ]] || die "unexpected output directory $OUT"
rm -rf "$OUT/origin" "$OUT/nginx" "$OUT/haproxy" "$OUT/gatehouse" "$OUT/docroot" "$OUT/wrk" \
    "$OUT/gatehouse-sticky" "$OUT/gatehouse-sticky-nocookie" "$OUT/gatehouse-secure" \
    "$OUT/gatehouse-gzip" "$OUT/nginx-gzip" "$OUT/gatehouse-tls" "$OUT/nginx-tls" "$OUT/tls" \
    "$OUT/gatehouse-baseline" "$OUT/gatehouse-tls-baseline"
mkdir -p "$OUT"/{origin,nginx,haproxy,gatehouse,docroot,wrk}
for p in gatehouse-sticky gatehouse-sticky-nocookie gatehouse-secure gatehouse-gzip nginx-gzip gatehouse-tls nginx-tls \
    gatehouse-baseline gatehouse-tls-baseline; do
    if selected "$p"; then mkdir -p "$OUT/$p"; fi
done
for d in origin nginx nginx-gzip nginx-tls; do
    if [[ $d == origin || $d == nginx ]] || selected "$d"; then
        mkdir -p "$OUT/$d"/{logs,tmp/body,tmp/proxy,tmp/fastcgi,tmp/uwsgi,tmp/scgi}
    fi
done

CHECK_PORTS=("$ORIGIN_PORT")
for p in "${PROXIES[@]}"; do CHECK_PORTS+=("${PROXY_PORT[$p]}"); done
if selected gatehouse-tls; then CHECK_PORTS+=("$GATEHOUSE_TLS_PLAIN_PORT"); fi # gatehouse-tls.toml's plain listener
if selected gatehouse-tls-baseline; then CHECK_PORTS+=("$GATEHOUSE_TLS_BASELINE_PLAIN_PORT"); fi
for port in "${CHECK_PORTS[@]}"; do
    if port_in_use "$port"; then
        ss -Htlnp "sport = :$port" >&2 2>/dev/null || true
        die "port 127.0.0.1:$port is already in use; stop whatever holds it and retry"
    fi
done

head -c 1024 /dev/zero | tr '\0' 'a' >"$OUT/docroot/1k"
head -c 65536 /dev/zero | tr '\0' 'b' >"$OUT/docroot/64k"

# The gzip scenario's page: a product listing in HTML, as a shop or dashboard serves it,
# with the repetition of real markup (the same tags and classes on every row) and varying
# text and numbers (from a fixed linear congruential generator, so every run gets the same
# page), cut and padded to exactly 64 KiB. The origin serves *.html as text/html.
make_page() { # bytes
    awk -v size="$1" '
    function rnd(n) { seed = (seed * 16807) % 2147483647; return int(seed / 256) % n }
    BEGIN {
        seed = 42
        na = split("Compact Classic Deluxe Ergonomic Portable Rugged Slim Smart Wireless Heavy-duty Eco Pro", adj, " ")
        nn = split("Desk Lamp|Office Chair|Coffee Grinder|Backpack|Water Bottle|Keyboard|Monitor Stand|Headphones|Kettle|Notebook|Cable Organiser|Bike Light|Travel Mug|Phone Case|Desk Mat", noun, "|")
        nc = split("lighting furniture kitchen bags outdoor computing audio stationery accessories", cat, " ")
        nt = split("In stock|Low stock|Ships in 2-3 days|Back-order|Pre-order", stock, "|")
        head = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>Catalogue - All products</title>\n<link rel=\"stylesheet\" href=\"/static/css/site.css\">\n</head>\n<body class=\"catalogue\">\n<header class=\"site-header\"><nav class=\"main-nav\"><a href=\"/\">Home</a> <a href=\"/products\">Products</a> <a href=\"/cart\">Cart</a> <a href=\"/account\">Account</a></nav></header>\n<main id=\"content\">\n<h1>All products</h1>\n<table class=\"product-table\">\n<thead><tr><th>SKU</th><th>Product</th><th>Category</th><th>Price</th><th>Rating</th><th>Availability</th><th></th></tr></thead>\n<tbody>\n"
        foot = "</tbody>\n</table>\n</main>\n<footer class=\"site-footer\"><p>&copy; Example Shop. Prices include VAT.</p></footer>\n</body>\n</html>\n"
        out = head
        for (i = 1; ; i++) {
            sku = sprintf("SKU-%05d", 10000 + rnd(90000))
            name = adj[1 + rnd(na)] " " noun[1 + rnd(nn)]
            c = cat[1 + rnd(nc)]
            r1 = 1 + rnd(4); r2 = rnd(10)
            row = sprintf("<tr class=\"product-row%s\" data-id=\"%d\"><td class=\"sku\">%s</td><td class=\"name\"><a href=\"/products/%d\">%s</a></td><td class=\"category\"><a href=\"/c/%s\">%s</a></td><td class=\"price\">&euro;%d.%02d</td><td class=\"rating\" title=\"%d.%d out of 5\">%d.%d</td><td class=\"stock\">%s</td><td><button class=\"btn btn-primary add-to-cart\" data-sku=\"%s\">Add to cart</button></td></tr>\n",
                (i % 2) ? "" : " even", i, sku, i, name, c, c, 5 + rnd(400), rnd(100), r1, r2, r1, r2, stock[1 + rnd(nt)], sku)
            if (length(out) + length(row) + length(foot) + 16 > size) break
            out = out row
        }
        pad = size - length(out) - length(foot) - 8
        printf "%s<!--%s-->\n%s", out, sprintf("%" pad "s", ""), foot
    }'
}
if $GZIP_SELECTED; then
    make_page "${SCENARIO_BYTES[$GZIP_SCENARIO]}" >"$OUT/docroot/$GZIP_SCENARIO"
    [[ $(wc -c <"$OUT/docroot/$GZIP_SCENARIO") == "${SCENARIO_BYTES[$GZIP_SCENARIO]}" ]] ||
        die "generated $GZIP_SCENARIO is not ${SCENARIO_BYTES[$GZIP_SCENARIO]} bytes"
fi

temp_paths() { # prefix
    cat <<EOF
    client_body_temp_path $1/tmp/body;
    proxy_temp_path       $1/tmp/proxy;
    fastcgi_temp_path     $1/tmp/fastcgi;
    uwsgi_temp_path       $1/tmp/uwsgi;
    scgi_temp_path        $1/tmp/scgi;
EOF
}

# The top of the nginx.conf of the NGINX under $OUT/NAME, up to its http block's temp paths:
# one process (master_process off, so one PID does all the work), no access log, client
# connections kept for the whole run.
nginx_top() { # name
    cat <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $OUT/$1/nginx.pid;
error_log $OUT/$1/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
$(temp_paths "$OUT/$1")
EOF
}

# The origin as the NGINX proxies reach it: connections kept and reused, as gatehouse's and
# HAProxy's are.
nginx_upstream() {
    cat <<EOF
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
EOF
}

# Every request of an NGINX proxy to the origin, over kept-alive HTTP/1.1.
nginx_proxy_location() {
    cat <<EOF
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }
EOF
}

# Origin: a single nginx process (master_process off) serving the two files.
cat >"$OUT/origin/nginx.conf" <<EOF
$(nginx_top origin)
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16;
    server {
        listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
        root $OUT/docroot;
        location / { }
    }
}
EOF

# NGINX under test: one process (master_process off), so one PID does all the work.
cat >"$OUT/nginx/nginx.conf" <<EOF
$(nginx_top nginx)
$(nginx_upstream)
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
$(nginx_proxy_location)
    }
}
EOF

# NGINX with gzip (the gzip scenario): the same as NGINX under test, plus gzip at level 5
# for text/html, on the proxied responses (gzip_proxied any: whatever the request's Via).
if selected nginx-gzip; then
    cat >"$OUT/nginx-gzip/nginx.conf" <<EOF
$(nginx_top nginx-gzip)
    gzip on;
    gzip_comp_level 5;
    gzip_types text/html;
    gzip_min_length 1024;
    gzip_proxied any;
$(nginx_upstream)
    server {
        listen 127.0.0.1:$NGINX_GZIP_PORT backlog=4096;
$(nginx_proxy_location)
    }
}
EOF
fi

# TLS: a test CA and a leaf certificate for localhost and 127.0.0.1 (RSA 2048, SHA-256, the
# common case), made fresh for every run, both proxies serving the same leaf; and the RFC 7919
# ffdhe2048 group for NGINX's DHE ciphers, the group gatehouse uses.
TLS_DIR="$OUT/tls"
MOZILLA_CIPHERS=ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384
if $TLS_SELECTED; then
    mkdir -p "$TLS_DIR"
    {
        openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 -subj "/CN=gatehouse bench CA" \
            -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" &&
            openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" \
                -keyout "$TLS_DIR/localhost.key" -out "$TLS_DIR/localhost.csr" &&
            printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
                "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$TLS_DIR/leaf.ext" &&
            openssl x509 -req -sha256 -days 30 -in "$TLS_DIR/localhost.csr" -CA "$TLS_DIR/ca.pem" \
                -CAkey "$TLS_DIR/ca.key" -CAcreateserial -extfile "$TLS_DIR/leaf.ext" -out "$TLS_DIR/localhost.crt" &&
            cat "$TLS_DIR/localhost.crt" "$TLS_DIR/ca.pem" >"$TLS_DIR/localhost.pem" &&
            openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048 -out "$TLS_DIR/ffdhe2048.pem"
    } >"$TLS_DIR/openssl.log" 2>&1 || die "could not generate the test certificates (log: $TLS_DIR/openssl.log)"
fi

# NGINX with TLS: the same as NGINX under test, listening with TLS on the same certificate,
# with Mozilla's intermediate settings (its generator's NGINX output, version 5: TLS 1.2 and
# 1.3, the same cipher list as gatehouse's default, the client's cipher order, a 10 MB shared
# session cache, no session tickets, ffdhe2048) and HTTP/2 on the listener as gatehouse offers it.
if selected nginx-tls; then
    cat >"$OUT/nginx-tls/nginx.conf" <<EOF
$(nginx_top nginx-tls)
$(nginx_upstream)
    server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl http2 backlog=4096;
        ssl_certificate     $TLS_DIR/localhost.pem;
        ssl_certificate_key $TLS_DIR/localhost.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ecdh_curve X25519:prime256v1:secp384r1;
        ssl_ciphers $MOZILLA_CIPHERS;
        ssl_prefer_server_ciphers off;
        ssl_session_timeout 1d;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets off;
        ssl_dhparam $TLS_DIR/ffdhe2048.pem;
        http2_max_requests 10000000;
$(nginx_proxy_location)
    }
}
EOF
fi

# HAProxy under test: one thread, connection reuse to the origin, no logging.
cat >"$OUT/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    maxconn 4096
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 60s
    timeout http-keep-alive 300s

frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend origin

backend origin
    http-reuse always
    server origin 127.0.0.1:$ORIGIN_PORT
EOF

"$NGINX_BIN" -t -q -p "$OUT/origin" -e "$OUT/origin/logs/error.log" -c "$OUT/origin/nginx.conf" ||
    die "origin nginx config is invalid ($OUT/origin/nginx.conf)"
if selected nginx; then
    "$NGINX_BIN" -t -q -p "$OUT/nginx" -e "$OUT/nginx/logs/error.log" -c "$OUT/nginx/nginx.conf" ||
        die "nginx config is invalid ($OUT/nginx/nginx.conf)"
fi
if selected nginx-gzip; then
    "$NGINX_BIN" -t -q -p "$OUT/nginx-gzip" -e "$OUT/nginx-gzip/logs/error.log" -c "$OUT/nginx-gzip/nginx.conf" ||
        die "nginx-gzip config is invalid ($OUT/nginx-gzip/nginx.conf)"
fi
if selected nginx-tls; then
    "$NGINX_BIN" -t -q -p "$OUT/nginx-tls" -e "$OUT/nginx-tls/logs/error.log" -c "$OUT/nginx-tls/nginx.conf" ||
        die "nginx-tls config is invalid ($OUT/nginx-tls/nginx.conf)"
fi
if selected haproxy; then
    "$HAPROXY_BIN" -c -q -f "$OUT/haproxy/haproxy.cfg" ||
        die "haproxy config is invalid ($OUT/haproxy/haproxy.cfg)"
fi

GATEHOUSE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/gatehouse"
if $GATEHOUSE_SELECTED; then
    if selected gatehouse; then
        grep -q "127.0.0.1:$GATEHOUSE_PORT" "$GATEHOUSE_CONFIG" && grep -q "127.0.0.1:$ORIGIN_PORT" "$GATEHOUSE_CONFIG" ||
            die "$GATEHOUSE_CONFIG must listen on 127.0.0.1:$GATEHOUSE_PORT and point at 127.0.0.1:$ORIGIN_PORT"
    fi
    if $STICKY_SELECTED; then
        grep -q "127.0.0.1:$GATEHOUSE_STICKY_PORT" "$GATEHOUSE_STICKY_CONFIG" &&
            grep -q "127.0.0.1:$ORIGIN_PORT" "$GATEHOUSE_STICKY_CONFIG" &&
            grep -q '^\[pools\.origin\.sticky\]' "$GATEHOUSE_STICKY_CONFIG" ||
            die "$GATEHOUSE_STICKY_CONFIG must listen on 127.0.0.1:$GATEHOUSE_STICKY_PORT, point at 127.0.0.1:$ORIGIN_PORT and have [pools.origin.sticky]"
    fi
    if selected gatehouse-secure; then
        grep -q "127.0.0.1:$GATEHOUSE_SECURE_PORT" "$GATEHOUSE_SECURE_CONFIG" &&
            grep -q "127.0.0.1:$ORIGIN_PORT" "$GATEHOUSE_SECURE_CONFIG" &&
            grep -q '^\[security\]' "$GATEHOUSE_SECURE_CONFIG" ||
            die "$GATEHOUSE_SECURE_CONFIG must listen on 127.0.0.1:$GATEHOUSE_SECURE_PORT, point at 127.0.0.1:$ORIGIN_PORT and have [security]"
    fi
    if selected gatehouse-gzip; then
        grep -q "127.0.0.1:$GATEHOUSE_GZIP_PORT" "$GATEHOUSE_GZIP_CONFIG" &&
            grep -q "127.0.0.1:$ORIGIN_PORT" "$GATEHOUSE_GZIP_CONFIG" &&
            grep -q '^\[compression\]' "$GATEHOUSE_GZIP_CONFIG" ||
            die "$GATEHOUSE_GZIP_CONFIG must listen on 127.0.0.1:$GATEHOUSE_GZIP_PORT, point at 127.0.0.1:$ORIGIN_PORT and have [compression]"
    fi
    if selected gatehouse-tls; then
        grep -q "127.0.0.1:$GATEHOUSE_TLS_PORT" "$GATEHOUSE_TLS_CONFIG" &&
            grep -q "127.0.0.1:$ORIGIN_PORT" "$GATEHOUSE_TLS_CONFIG" &&
            grep -q '^\[tls\]' "$GATEHOUSE_TLS_CONFIG" ||
            die "$GATEHOUSE_TLS_CONFIG must listen on 127.0.0.1:$GATEHOUSE_TLS_PORT, point at 127.0.0.1:$ORIGIN_PORT and have [tls]"
    fi
    log "building gatehouse (cargo build --release)"
    cargo build --release >&2 || die "cargo build --release failed"
    [[ -x $GATEHOUSE_BIN ]] || die "no gatehouse binary at $GATEHOUSE_BIN after the build"
fi

# The baseline's settings: the same file as its counterpart's, with only the listen ports
# changed, so that both binaries read identical settings (and, run from ROOT, the same
# settings/ folder). The copy is checked to differ from its source in those ports alone.
# baseline_config source dest section from:to... -> writes dest (section: a table the
# source must have, such as [tls], or "" for none)
baseline_config() {
    local src=$1 dest=$2 section=$3 pair edits=() undo=()
    shift 3
    grep -q "127.0.0.1:$ORIGIN_PORT" "$src" ||
        die "$src must point at 127.0.0.1:$ORIGIN_PORT"
    [[ -z $section ]] || awk -v h="$section" '$1 == h { f = 1 } END { exit !f }' "$src" ||
        die "$src must have $section"
    for pair in "$@"; do
        grep -q "127.0.0.1:${pair%%:*}\b" "$src" ||
            die "$src must listen on 127.0.0.1:${pair%%:*} (see the ports in run.sh)"
        ! grep -q "127.0.0.1:${pair##*:}\b" "$src" ||
            die "$src already uses 127.0.0.1:${pair##*:}, the baseline's port"
        edits+=(-e "s/127\.0\.0\.1:${pair%%:*}\b/127.0.0.1:${pair##*:}/g")
        undo+=(-e "s/127\.0\.0\.1:${pair##*:}\b/127.0.0.1:${pair%%:*}/g")
    done
    {
        echo "# Generated by benches/load/run.sh from $src, only the ports changed ($*)."
        sed "${edits[@]}" "$src"
    } >"$dest"
    tail -n +2 "$dest" | sed "${undo[@]}" | cmp -s - "$src" ||
        die "$dest differs from $src in more than the ports"
}

# check_baseline proxy config: the baseline binary must accept the settings (--check).
check_baseline() {
    local out
    out=$("$BASELINE_BIN" --check --config "$2" 2>&1) ||
        die "the baseline binary $BASELINE_BIN rejects the settings of $1 ($2, checked with --check): ${out//$'\n'/ | }"
}

GATEHOUSE_BASELINE_CONFIG="$OUT/gatehouse-baseline/gatehouse.toml"
GATEHOUSE_TLS_BASELINE_CONFIG="$OUT/gatehouse-tls-baseline/gatehouse-tls.toml"
if selected gatehouse-baseline; then
    baseline_config "$GATEHOUSE_CONFIG" "$GATEHOUSE_BASELINE_CONFIG" "" \
        "$GATEHOUSE_PORT:$GATEHOUSE_BASELINE_PORT"
    check_baseline gatehouse-baseline "$GATEHOUSE_BASELINE_CONFIG"
fi
if selected gatehouse-tls-baseline; then
    baseline_config "$GATEHOUSE_TLS_CONFIG" "$GATEHOUSE_TLS_BASELINE_CONFIG" '[tls]' \
        "$GATEHOUSE_TLS_PORT:$GATEHOUSE_TLS_BASELINE_PORT" \
        "$GATEHOUSE_TLS_PLAIN_PORT:$GATEHOUSE_TLS_BASELINE_PLAIN_PORT"
    check_baseline gatehouse-tls-baseline "$GATEHOUSE_TLS_BASELINE_CONFIG"
fi

# ------------------------------------------------------------------- helpers
start_proxy() { # proxy -> LAST_PID
    local proxy=$1 logfile="$OUT/$1/run.log"
    case $proxy in
        gatehouse)
            start_bg gatehouse "$logfile" env RUST_LOG=warn \
                taskset -c "$PROXY_CPU" "$GATEHOUSE_BIN" --config "$GATEHOUSE_CONFIG" ;;
        gatehouse-sticky | gatehouse-sticky-nocookie)
            start_bg "$proxy" "$logfile" env RUST_LOG=warn \
                taskset -c "$PROXY_CPU" "$GATEHOUSE_BIN" --config "$GATEHOUSE_STICKY_CONFIG" ;;
        gatehouse-secure)
            start_bg "$proxy" "$logfile" env RUST_LOG=warn \
                taskset -c "$PROXY_CPU" "$GATEHOUSE_BIN" --config "$GATEHOUSE_SECURE_CONFIG" ;;
        gatehouse-gzip)
            start_bg "$proxy" "$logfile" env RUST_LOG=warn \
                taskset -c "$PROXY_CPU" "$GATEHOUSE_BIN" --config "$GATEHOUSE_GZIP_CONFIG" ;;
        gatehouse-tls)
            start_bg "$proxy" "$logfile" env RUST_LOG=warn \
                taskset -c "$PROXY_CPU" "$GATEHOUSE_BIN" --config "$GATEHOUSE_TLS_CONFIG" ;;
        gatehouse-baseline)
            start_bg "$proxy" "$logfile" env RUST_LOG=warn \
                taskset -c "$PROXY_CPU" "$BASELINE_BIN" --config "$GATEHOUSE_BASELINE_CONFIG" ;;
        gatehouse-tls-baseline)
            start_bg "$proxy" "$logfile" env RUST_LOG=warn \
                taskset -c "$PROXY_CPU" "$BASELINE_BIN" --config "$GATEHOUSE_TLS_BASELINE_CONFIG" ;;
        nginx-tls)
            start_bg nginx-tls "$logfile" taskset -c "$PROXY_CPU" \
                "$NGINX_BIN" -p "$OUT/nginx-tls" -e "$OUT/nginx-tls/logs/error.log" -c "$OUT/nginx-tls/nginx.conf" ;;
        nginx-gzip)
            start_bg nginx-gzip "$logfile" taskset -c "$PROXY_CPU" \
                "$NGINX_BIN" -p "$OUT/nginx-gzip" -e "$OUT/nginx-gzip/logs/error.log" -c "$OUT/nginx-gzip/nginx.conf" ;;
        nginx)
            start_bg nginx "$logfile" taskset -c "$PROXY_CPU" \
                "$NGINX_BIN" -p "$OUT/nginx" -e "$OUT/nginx/logs/error.log" -c "$OUT/nginx/nginx.conf" ;;
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

# check_response port scenario -> prints "ok" or a short description of what is wrong
check_response() {
    local got
    if is_tls_scenario "$2"; then
        local http=--http1.1
        [[ $2 != tls-h2 ]] || http=--http2
        got=$(curl -sS -o /dev/null --max-time 5 -w '%{http_code} %{size_download} %{http_version}' "$http" \
            --cacert "$TLS_DIR/ca.pem" --resolve "localhost:$1:127.0.0.1" \
            "https://localhost:$1/${SCENARIO_PATH[$2]}" 2>&1) || true
        if [[ $got == "200 ${SCENARIO_BYTES[$2]} "* ]]; then
            if [[ $2 == tls-h2 && $got != *" 2" ]]; then
                echo "not HTTP/2 (${got//[$'\n\t']/ })"
            else
                echo ok
            fi
        else
            echo "bad response (${got//[$'\n\t']/ })"
        fi
        return
    fi
    got=$(curl -sS -o /dev/null --max-time 5 -w '%{http_code} %{size_download}' \
        "http://127.0.0.1:$1/$2" 2>&1) || true
    if [[ $got == "200 ${SCENARIO_BYTES[$2]}" ]]; then
        echo ok
    else
        echo "bad response (${got//[$'\n\t']/ })"
    fi
}

# check_gzip port scenario -> prints "ok SIZE" (SIZE: the compressed body's bytes) or a
# short description of what is wrong. The response to a request accepting gzip must be
# 200, Content-Encoding: gzip, and decompress to exactly the page the origin serves.
check_gzip() {
    local got body="$OUT/wrk/check-$2.gz"
    got=$(curl -sS -o "$body" -D - --max-time 5 -H 'Accept-Encoding: gzip' \
        -w '%{http_code} %{size_download}\n' "http://127.0.0.1:$1/$2" 2>&1 | tr -d '\r') || true
    local last
    last=$(tail -n 1 <<<"$got")
    if [[ ${last%% *} != 200 ]]; then
        echo "bad response ($last)"
    elif ! grep -qi '^content-encoding: *gzip' <<<"$got"; then
        echo "response not gzip-encoded ($last)"
    elif ! gzip -dc <"$body" 2>/dev/null | cmp -s - "$OUT/docroot/$2"; then
        echo "the gzip body does not decompress to the page"
    else
        echo "ok ${last##* }"
    fi
}

# sticky_cookie port scenario -> prints the value of the session cookie the response sets
# (empty if it sets none)
sticky_cookie() {
    curl -sS -o /dev/null -D - --max-time 5 "http://127.0.0.1:$1/$2" 2>/dev/null | tr -d '\r' |
        sed -n "s/^[Ss][Ee][Tt]-[Cc][Oo][Oo][Kk][Ii][Ee]: *$STICKY_COOKIE=\([^;[:space:]]*\).*/\1/p" |
        head -n 1 || true
}

# check_sticky port scenario [cookie] -> prints "ok" or what is wrong. With a cookie, the
# response must not set a new one (the cookie was accepted and names the server that
# answered); without, it must set one.
check_sticky() {
    local args=() got
    [[ -z ${3-} ]] || args=(-H "Cookie: $STICKY_COOKIE=$3")
    got=$(curl -sS -o /dev/null -D - --max-time 5 -w '%{http_code} %{size_download}\n' \
        "${args[@]}" "http://127.0.0.1:$1/$2" 2>&1 | tr -d '\r') || true
    if [[ $(tail -n 1 <<<"$got") != "200 ${SCENARIO_BYTES[$2]}" ]]; then
        echo "bad response ($(tail -n 1 <<<"$got"))"
    elif [[ -n ${3-} ]] && grep -qi "^set-cookie: *$STICKY_COOKIE=" <<<"$got"; then
        echo "the $STICKY_COOKIE cookie sent was not accepted (the response sets a new one)"
    elif [[ -z ${3-} ]] && ! grep -qi "^set-cookie: *$STICKY_COOKIE=" <<<"$got"; then
        echo "no $STICKY_COOKIE cookie set on a request without one"
    else
        echo ok
    fi
}

# run_wrk port scenario seconds outfile [wrk options...] -> exit status of wrk (bounded by
# timeout). The TLS scenarios use https (tls-h2: h2load, one stream per connection, as many
# connections as wrk; its output is parsed by parse_h2load).
run_wrk() {
    local rc=0 scheme=http
    is_tls_scenario "$2" && scheme=https
    if [[ $2 == tls-full ]]; then
        # TLS_FULL_CLIENTS openssl s_time -new at once, each for the given seconds; the summary
        # line (connections, bytes, wall-clock seconds of the whole) is what parse_s_time reads.
        start_bg s_time "$4" timeout -k 5 $(($3 + 30)) taskset -c "$LOAD_CPU" bash -c '
            out=$1 port=$2 path=$3 secs=$4 k=$5
            t0=$(date +%s.%N)
            for ((i = 1; i <= k; i++)); do
                openssl s_time -new -connect "127.0.0.1:$port" -www "/$path" -time "$secs" >"$out.$i" 2>&1 &
            done
            wait
            t1=$(date +%s.%N)
            awk -v t0="$t0" -v t1="$t1" "\$2 == \"connections\" && \$5 == \"real\" { n += \$1; b += \$1 * \$7 }
                END { printf \"s_time total %d connections %.0f bytes %.3f seconds\\n\", n, b, t1 - t0 }" "$out".*
        ' s_time "$4" "$1" "${SCENARIO_PATH[$2]}" "$3" "$TLS_FULL_CLIENTS"
    elif [[ $2 == tls-h2 ]]; then
        start_bg h2load "$4" timeout -k 5 $(($3 + 30)) \
            taskset -c "$LOAD_CPU" "$H2LOAD_BIN" -t1 -c"$CONNECTIONS" -m1 -D"$3" "${@:5}" \
            "https://127.0.0.1:$1/${SCENARIO_PATH[$2]}"
    else
        start_bg wrk "$4" timeout -k 5 $(($3 + 30)) \
            taskset -c "$LOAD_CPU" "$WRK_BIN" -t1 -c"$CONNECTIONS" -d"$3"s --latency "${@:5}" \
            "$scheme://127.0.0.1:$1/${SCENARIO_PATH[$2]}"
    fi
    local pid=$LAST_PID
    wait "$pid" || rc=$?
    unset "STARTED[$pid]"
    return "$rc"
}

# parse_h2load file -> the same fields as parse_wrk; h2load gives no percentiles (-1), the
# bytes are the response bodies (its "data"), failed, errored and timed out requests count
# as socket errors.
parse_h2load() {
    awk '
    BEGIN { rps = 0; req = 0; bytes = 0; non2xx = 0; sock = 0 }
    $1 == "finished" && $2 == "in" { rps = $4 + 0 }
    $1 == "requests:" { req = $8 + 0; sock = ($10 + 0) + ($12 + 0) + ($14 + 0) }
    $1 == "status" && $2 == "codes:" { non2xx = ($5 + 0) + ($7 + 0) + ($9 + 0) }
    $1 == "traffic:" { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^data/) { b = $i; gsub(/[()]/, "", b); bytes = b + 0 } }
    END { printf "%s -1 -1 %d %.0f %.0f %d %d\n", rps, req, bytes, bytes, non2xx, sock }
    ' "$1"
}

# parse_wrk file -> "rps p50_ms p99_ms requests bytes_read bytes_read_max non2xx socket_errors"
# parse_s_time file -> the same fields as parse_wrk, from run_wrk's summary of the s_time
# clients: no percentiles (-1), req/s = connections per wall-clock second; s_time reads the
# whole response of HTTP/1.0 requests and checks no status, so bytes stand in for that.
parse_s_time() {
    awk '$1 == "s_time" && $2 == "total" {
        printf "%.2f -1 -1 %d %.0f %.0f 0 0\n", ($7 > 0) ? $3 / $7 : 0, $3, $5, $5; found = 1 }
        END { if (!found) print "0 -1 -1 0 0 0 0 0" }' "$1"
}

parse_wrk() {
    if [[ $1 == *-tls-h2-* ]]; then parse_h2load "$1"; return; fi
    if [[ $1 == *-tls-full-* ]]; then parse_s_time "$1"; return; fi
    awk '
    function to_ms(v,   n, u) {
        n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n / 1000
        if (u == "ms") return n + 0
        if (u == "s")  return n * 1000
        if (u == "m")  return n * 60000
        if (u == "h")  return n * 3600000
        return -1
    }
    # wrk rounds the byte count (e.g. "3.30GB"); hi is the largest value it can stand for.
    function to_bytes(v,   n, u, m, d) {
        n = v; sub(/[A-Za-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
        m = -1
        if (u == "B")  m = 1
        if (u == "KB") m = 1024
        if (u == "MB") m = 1048576
        if (u == "GB") m = 1073741824
        if (u == "TB") m = 1099511627776
        d = 0
        if (index(n, ".")) d = length(n) - index(n, ".")
        hi = (n + 0.5 / (10 ^ d)) * m
        return n * m
    }
    BEGIN { rps = 0; p50 = -1; p99 = -1; req = 0; bytes = 0; hi = 0; non2xx = 0; sock = 0 }
    $1 == "50%"            { p50 = to_ms($2) }
    $1 == "99%"            { p99 = to_ms($2) }
    $2 == "requests" && $3 == "in" { req = $1; bytes = to_bytes($5) }
    $1 == "Requests/sec:"  { rps = $2 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    $1 == "Socket" && $2 == "errors:" { sock = ($4 + 0) + ($6 + 0) + ($8 + 0) + ($10 + 0) }
    END { printf "%s %s %s %d %.0f %.0f %d %d\n", rps, p50, p99, req, bytes, hi, non2xx, sock }
    ' "$1"
}

# ------------------------------------------------------------------- origin
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
awk -v l="${LOAD_BEFORE%% *}" 'BEGIN { exit !(l >= 0.5) }' &&
    log "warning: load average is $LOAD_BEFORE before starting; other work on this machine will skew the numbers"
log "starting origin nginx on 127.0.0.1:$ORIGIN_PORT (CPU $LOAD_CPU)"
start_bg origin "$OUT/origin/run.log" taskset -c "$LOAD_CPU" \
    "$NGINX_BIN" -p "$OUT/origin" -e "$OUT/origin/logs/error.log" -c "$OUT/origin/nginx.conf"
ORIGIN_PID=$LAST_PID
wait_port "$ORIGIN_PID" "$ORIGIN_PORT" origin "$OUT/origin/run.log"
for s in "${SCENARIOS[@]}"; do
    [[ $(check_response "$ORIGIN_PORT" "$s") == ok ]] || die "origin does not serve /$s correctly"
done

# --------------------------------------------------------------------- runs
printf 'round\tscenario\tproxy\trps\tp50_ms\tp99_ms\trequests\tcpu_ticks\tcpu_ms_per_1k\tidle_rss_kb\tpeak_rss_kb\tnon2xx\tsocket_errors\tbytes_per_response\tproblems\n' >"$RUNS_TSV"

n=${#PROXIES[@]}
total_runs=0
for s in "${RUN_SCENARIOS[@]}"; do
    for p in "${PROXIES[@]}"; do
        if proxy_runs "$p" "$s"; then total_runs=$((total_runs + ROUNDS)); fi
    done
done
declare -A GZIP_SIZES=() # proxy -> compressed sizes of the page seen by the check requests
run_no=0
for ((r = 0; r < ROUNDS; r++)); do
    order=()
    for ((i = 0; i < n; i++)); do order+=("${PROXIES[(i + r) % n]}"); done
    log "round $((r + 1))/$ROUNDS: ${order[*]}"
    for s in "${RUN_SCENARIOS[@]}"; do
        for p in "${order[@]}"; do
            proxy_runs "$p" "$s" || continue
            run_no=$((run_no + 1))
            port=${PROXY_PORT[$p]}
            log "  [$run_no/$total_runs] $p ${SCENARIO_LABEL[$s]}: start, ${IDLE_SECS}s idle, ${WARMUP_SECS}s warm-up, ${DURATION}s measured"
            problems=()

            alive "$ORIGIN_PID" || die "the origin exited (log: $OUT/origin/logs/error.log)"
            start_proxy "$p"
            pid=$LAST_PID
            sleep "$IDLE_SECS"
            idle_kb=$(status_kb "$pid" VmRSS)

            # The smallest body a response may carry: the page's size, or for the gzip
            # scenario the compressed size the check request got.
            min_body=${SCENARIO_BYTES[$s]}
            if is_gzip "$p"; then
                check=$(check_gzip "$port" "$s")
                if [[ $check == "ok "* ]]; then
                    min_body=${check#ok }
                    GZIP_SIZES[$p]="${GZIP_SIZES[$p]-}${GZIP_SIZES[$p]+ }$min_body"
                else
                    problems+=("$check")
                fi
            else
                check=$(check_response "$port" "$s")
                [[ $check == ok ]] || problems+=("$check")
            fi

            # Session persistence: the client either sends back the cookie it was
            # given (fetched here, once per run) or never sends one.
            wrk_opts=()
            case $p in
                gatehouse-sticky)
                    cookie=$(sticky_cookie "$port" "$s")
                    if [[ -z $cookie ]]; then
                        problems+=("no $STICKY_COOKIE cookie in the response")
                    else
                        check=$(check_sticky "$port" "$s" "$cookie")
                        [[ $check == ok ]] || problems+=("$check")
                        wrk_opts=(-H "Cookie: $STICKY_COOKIE=$cookie")
                    fi ;;
                gatehouse-sticky-nocookie)
                    check=$(check_sticky "$port" "$s")
                    [[ $check == ok ]] || problems+=("$check") ;;
                gatehouse-gzip | nginx-gzip)
                    wrk_opts=(-H "Accept-Encoding: gzip") ;;
            esac
            [[ $s != tls-new ]] || wrk_opts=(-H "Connection: close")

            tag="r$((r + 1))-$s-$p"
            run_wrk "$port" "$s" "$WARMUP_SECS" "$OUT/wrk/$tag-warmup.txt" "${wrk_opts[@]}" ||
                problems+=("warm-up wrk exit $?")

            if alive "$pid"; then
                t0=$(cpu_ticks "$pid")
                wrk_rc=0
                run_wrk "$port" "$s" "$DURATION" "$OUT/wrk/$tag.txt" "${wrk_opts[@]}" || wrk_rc=$?
                ((wrk_rc == 0)) || problems+=("wrk exit $wrk_rc")
                if alive "$pid"; then
                    t1=$(cpu_ticks "$pid")
                    peak_kb=$(status_kb "$pid" VmHWM)
                else
                    t1=$t0
                    peak_kb=0
                    problems+=("proxy died during the run")
                fi
                read -r rps p50 p99 requests bytes bytes_hi non2xx sockerr < <(parse_wrk "$OUT/wrk/$tag.txt")
            else
                problems+=("proxy died during warm-up")
                rps=0 p50=-1 p99=-1 requests=0 bytes=0 bytes_hi=0 non2xx=0 sockerr=0 t0=0 t1=0 peak_kb=0
            fi
            stop_pid "$pid"

            ticks=$((t1 - t0))
            if ((requests > 0)); then
                cpu_per_1k=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$requests" \
                    'BEGIN { printf "%.3f", (t * 1000 / hz) / (n / 1000) }')
                bpr=$(awk -v b="$bytes" -v n="$requests" 'BEGIN { printf "%.0f", b / n }')
                # Every response must at least carry the full body; less means
                # truncated or empty responses that would make a proxy look fast.
                awk -v hi="$bytes_hi" -v n="$requests" -v body="$min_body" \
                    'BEGIN { exit !(hi >= n * body) }' ||
                    problems+=("short responses (${bpr} B/response read)")
            else
                cpu_per_1k=-1
                bpr=0
                problems+=("no completed requests")
            fi
            ((non2xx == 0)) || problems+=("$non2xx non-2xx")
            ((sockerr == 0)) || problems+=("$sockerr socket errors")
            [[ $s == tls-h2 || $s == tls-full || ($p50 != -1 && $p99 != -1) ]] || problems+=("no latency distribution")

            problem_text=ok
            if ((${#problems[@]} > 0)); then
                problem_text=$(printf '%s; ' "${problems[@]}")
                problem_text=${problem_text%; }
                log "    PROBLEM: $problem_text"
            fi
            log "    $(printf '%.0f req/s, p50 %s ms, p99 %s ms, %s CPU-ms/1k req, idle %s kB, peak %s kB' \
                "$rps" "$p50" "$p99" "$cpu_per_1k" "$idle_kb" "$peak_kb")"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
                $((r + 1)) "$s" "$p" "$rps" "$p50" "$p99" "$requests" "$ticks" "$cpu_per_1k" \
                "$idle_kb" "$peak_kb" "$non2xx" "$sockerr" "$bpr" "$problem_text" >>"$RUNS_TSV"
        done
    done
done

stop_pid "$ORIGIN_PID"

# -------------------------------------------------------------------- report
if $GATEHOUSE_SELECTED; then
    if git_rev=$(git rev-parse --short HEAD 2>/dev/null); then
        git diff --quiet HEAD 2>/dev/null || git_rev="$git_rev + uncommitted changes"
    else
        git_rev="no commit yet"
    fi
else
    git_rev="not run"
fi
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
# What the baseline is: its path, version, digest and, when it lies in a git checkout, that
# checkout's commit (what it was most likely built from).
baseline_desc=
baseline_names=() # each baseline proxy selected, with what it runs as
if selected gatehouse-baseline; then
    baseline_names+=("gatehouse-baseline (as gatehouse, $GATEHOUSE_CONFIG)")
fi
if selected gatehouse-tls-baseline; then
    baseline_names+=("gatehouse-tls-baseline (as gatehouse-tls, $GATEHOUSE_TLS_CONFIG)")
fi
if $BASELINE_SELECTED; then
    baseline_desc="$BASELINE_BIN ($(ver "$BASELINE_BIN" --version), sha256 $(sha256sum "$BASELINE_BIN" | cut -c1-12)"
    if baseline_rev=$(git -C "$(dirname "$BASELINE_BIN")" rev-parse --short HEAD 2>/dev/null); then
        git -C "$(dirname "$BASELINE_BIN")" diff --quiet HEAD 2>/dev/null || baseline_rev="$baseline_rev + uncommitted changes"
        baseline_desc+=", in a git checkout at $baseline_rev"
    fi
    baseline_desc+=")"
fi

# table base "proxy ..." ["scenario ..."] -> markdown table of medians from runs.tsv, one
# row per scenario and proxy that ran it, with each value's ratio to the base proxy when
# it was run. Scenarios default to the standard ones.
table() {
    awk -F'\t' -v base="$1" -v proxies="$2" -v scenarios="${3:-${SCENARIOS[*]}}" \
        -v l1k="${SCENARIO_LABEL[1k]}" -v l64k="${SCENARIO_LABEL[64k]}" \
        -v lpage="${SCENARIO_LABEL[$GZIP_SCENARIO]}" -v page="$GZIP_SCENARIO" \
        -v ltls1k="${SCENARIO_LABEL[tls-1k]}" -v ltlsnew="${SCENARIO_LABEL[tls-new]}" -v ltlsh2="${SCENARIO_LABEL[tls-h2]}" \
        -v ltlsfull="${SCENARIO_LABEL[tls-full]}" '
    function median(key,   n, i, j, t, a) {
        n = cnt[key]
        for (i = 1; i <= n; i++) a[i] = val[key, i]
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        if (n == 0) return -1
        if (n % 2) return a[(n + 1) / 2]
        return (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function add(s, p, m, v,   k) {
        if (v < 0) return
        k = s SUBSEP p SUBSEP m
        val[k, ++cnt[k]] = v + 0
    }
    function cell(s, p, m, fmt,   v, b) {
        v = median(s SUBSEP p SUBSEP m)
        if (v < 0) return "n/a"
        out = sprintf(fmt, v)
        if ((base in have) && p != base) {
            b = median(s SUBSEP base SUBSEP m)
            out = out sprintf(" (%s)", (b > 0) ? sprintf("%.2f×", v / b) : "n/a")
        } else if (p == base) {
            out = out " (1.00×)"
        }
        return out
    }
    NR == 1 { next }
    {
        s = $2; p = $3
        add(s, p, "rps", $4); add(s, p, "p50", $5); add(s, p, "p99", $6)
        add(s, p, "cpu", $9); add(s, p, "idle", $10 / 1024); add(s, p, "peak", ($11 > 0) ? $11 / 1024 : -1)
        runs[s, p]++
        if ($15 != "ok") { bad[s, p]++; why[s, p] = why[s, p] (why[s, p] == "" ? "" : "; ") "r" $1 ": " $15 }
    }
    END {
        np = split(proxies, P, " "); ns = split(scenarios, S, " ")
        for (i = 1; i <= np; i++) have[P[i]] = 1
        label["1k"] = l1k; label["64k"] = l64k; label[page] = lpage
        label["tls-1k"] = ltls1k; label["tls-new"] = ltlsnew; label["tls-h2"] = ltlsh2; label["tls-full"] = ltlsfull
        print "| Scenario | Proxy | req/s | p50 ms | p99 ms | CPU-ms / 1k req | Peak RSS MiB | Idle RSS MiB | Errors |"
        print "|---|---|---:|---:|---:|---:|---:|---:|---|"
        for (i = 1; i <= ns; i++) for (j = 1; j <= np; j++) {
            s = S[i]; p = P[j]
            if (!runs[s, p]) continue
            if (bad[s, p]) {
                name = "**" p " ⚠**"
                err = sprintf("**%d/%d runs failed**: %s", bad[s, p], runs[s, p], why[s, p])
                anybad = 1
            } else { name = p; err = "none" }
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", label[s], name,
                cell(s, p, "rps", "%.0f"), cell(s, p, "p50", "%.2f"), cell(s, p, "p99", "%.2f"),
                cell(s, p, "cpu", "%.1f"), cell(s, p, "peak", "%.1f"), cell(s, p, "idle", "%.1f"), err
        }
        if (anybad) { print ""; print "⚠ Rows marked ⚠ had errors, bad or short responses: their numbers are not comparable." }
    }' "$RUNS_TSV"
}

{
    echo "## Load benchmark results"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(uname -sr), ${cpu_model:-unknown CPU}, $(nproc --all) CPUs"
    echo "- gatehouse: $git_rev; $(ver "$NGINX_BIN" -v); $(ver "$HAPROXY_BIN" -v | sed 's/ - https.*//'); $(ver "$WRK_BIN" -v | awk '{ print $1, $2 }')"
    echo "- wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency; ${ROUNDS} interleaved round(s); ${WARMUP_SECS}s warm-up per run; proxy on CPU $PROXY_CPU, origin + wrk on CPU $LOAD_CPU"
    if $BASELINE_SELECTED; then
        echo "- baseline: $baseline_desc"
    fi
    echo "- Load average (1/5/15 min) before the run: $LOAD_BEFORE"
    main_rows=()
    for p in "${PROXIES[@]}"; do
        if ! is_gzip "$p" && ! is_tls "$p"; then main_rows+=("$p"); fi
    done
    if ((${#main_rows[@]} > 0)); then
        echo "- Medians over rounds; (×N) = ratio to NGINX in the same scenario (lower is better except req/s)"
        echo
        table nginx "${main_rows[*]}"
    else
        echo "- Medians over rounds"
    fi
    if $STICKY_SELECTED && selected gatehouse; then
        echo
        echo "### Session persistence: ratios to plain gatehouse"
        echo
        echo "- gatehouse-sticky: $GATEHOUSE_STICKY_CONFIG, the client sends its $STICKY_COOKIE cookie back on every request"
        echo "- gatehouse-sticky-nocookie: the same, the client never sends it (a new cookie on every response)"
        echo "- (×N) = ratio to gatehouse without session persistence ($GATEHOUSE_CONFIG) in the same scenario"
        echo
        sticky_rows=gatehouse
        for p in gatehouse-sticky gatehouse-sticky-nocookie; do
            if selected "$p"; then sticky_rows+=" $p"; fi
        done
        table gatehouse "$sticky_rows"
    fi
    if selected gatehouse-secure; then
        echo
        echo "### Security checks: ratios to plain gatehouse"
        echo
        echo "- gatehouse-secure: $GATEHOUSE_SECURE_CONFIG, a hardened [security] section (allow/deny lists, 403 per"
        echo "  request, trusted proxies, per-client connection count, dot segments, min_body_rate, a rate limit"
        echo "  on client_ip) that admits every request of the benchmark: any 403 or 429 is an error"
        echo "- (×N) = ratio to gatehouse without them ($GATEHOUSE_CONFIG) in the same scenario"
        echo
        secure_rows=gatehouse-secure
        if selected gatehouse; then secure_rows="gatehouse gatehouse-secure"; fi
        table gatehouse "$secure_rows"
    fi
    if $GZIP_SELECTED; then
        echo
        echo "### gzip: ratios to NGINX with gzip"
        echo
        echo "- /$GZIP_SCENARIO: a ${SCENARIO_BYTES[$GZIP_SCENARIO]}-byte HTML page (text/html), wrk sends Accept-Encoding: gzip"
        echo "- gatehouse-gzip: $GATEHOUSE_GZIP_CONFIG ([compression], gzip level 5); nginx-gzip: gzip on, gzip_comp_level 5"
        for p in gatehouse-gzip nginx-gzip; do
            if selected "$p"; then
                echo "- compressed size of the page through $p (bytes, each run's check request): ${GZIP_SIZES[$p]-none}"
            fi
        done
        echo "- (×N) = ratio to nginx-gzip in the same scenario"
        echo
        gzip_rows=()
        for p in gatehouse-gzip nginx-gzip; do
            if selected "$p"; then gzip_rows+=("$p"); fi
        done
        table nginx-gzip "${gzip_rows[*]}" "$GZIP_SCENARIO"
    fi
    if $TLS_SELECTED; then
        echo
        echo "### TLS: ratios to NGINX with TLS"
        echo
        echo "- the same test certificate on both (RSA 2048, a test CA's leaf for localhost): $TLS_DIR/localhost.pem"
        echo "- gatehouse-tls: $GATEHOUSE_TLS_CONFIG (the [tls] defaults: Mozilla intermediate); nginx-tls: Mozilla"
        echo "  intermediate (ssl_protocols TLSv1.2 TLSv1.3, the same ciphers, ssl_session_cache shared:SSL:10m)"
        if selected gatehouse-tls-baseline; then
            echo "- gatehouse-tls-baseline: the baseline binary on $GATEHOUSE_TLS_BASELINE_CONFIG ($GATEHOUSE_TLS_CONFIG, ports changed)"
        fi
        echo "- ${SCENARIO_LABEL[tls-1k]}: wrk over https, connections reused"
        echo "- ${SCENARIO_LABEL[tls-new]}: wrk over https with Connection: close; wrk resumes each connection's"
        echo "  previous TLS session, so these are resumed handshakes; req/s = connections/s"
        echo "- ${SCENARIO_LABEL[tls-full]}: $TLS_FULL_CLIENTS x openssl s_time -new -www /1k (HTTP/1.0, a full"
        echo "  handshake per connection, never resumed); req/s = handshakes/s over the wall clock, no percentiles (n/a)"
        if [[ -n $H2LOAD_BIN ]]; then
            echo "- ${SCENARIO_LABEL[tls-h2]}: $(ver "$H2LOAD_BIN" --version) -t1 -c$CONNECTIONS -m1 -D${DURATION} (no percentiles: n/a)"
        else
            echo "- HTTP/2: not run (h2load not installed)"
        fi
        echo "- (×N) = ratio to nginx-tls in the same scenario"
        echo
        tls_rows=()
        for p in gatehouse-tls gatehouse-tls-baseline nginx-tls; do
            if selected "$p"; then tls_rows+=("$p"); fi
        done
        table nginx-tls "${tls_rows[*]}" "${TLS_SCENARIOS[*]}"
    fi
    if $BASELINE_SELECTED; then
        echo
        echo "### Against the baseline: ratios to the baseline binary"
        echo
        echo "- the baseline binary (see above) run as the current build is, on the same settings with only the"
        echo "  ports changed: $(printf '%s; ' "${baseline_names[@]}" | sed 's/; $//')"
        echo "- (×N) = ratio to the baseline in the same scenario: above 1.00× in req/s, below elsewhere, is the current build doing better"
        if selected gatehouse-baseline; then
            echo
            base_rows=gatehouse-baseline
            if selected gatehouse; then base_rows="gatehouse gatehouse-baseline"; fi
            table gatehouse-baseline "$base_rows"
        fi
        if selected gatehouse-tls-baseline; then
            echo
            base_rows=gatehouse-tls-baseline
            if selected gatehouse-tls; then base_rows="gatehouse-tls gatehouse-tls-baseline"; fi
            table gatehouse-tls-baseline "$base_rows" "${TLS_SCENARIOS[*]}"
        fi
    fi
} >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
cat "$RESULTS"
log "results: $RESULTS (per-run data: $RUNS_TSV, raw wrk output: $OUT/wrk/)"

if grep -q '⚠' "$RESULTS"; then
    exit 3
fi
