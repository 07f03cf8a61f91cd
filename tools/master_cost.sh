#!/usr/bin/env bash
# Master CPU and system calls per connection / per request, as in docs/benchmarks.md
# ("Master cost per connection"). Usage: tools/master_cost.sh close|keepalive [seconds] [strace|perf]
# Starts `gunicorn -w 2 -k gunicorn_fdpass.Worker examples.hello:app` on a free port, warms up,
# then runs `wrk -t1 -c16` and reads the master's utime+stime ticks around it. With `strace`,
# a second run under `strace -c -f -p MASTER` prints the calls per connection (or request).
# With `perf`, a third run records `perf record -g` of the master into /tmp/master.perf.
# CODE_DIR=/path/to/another/checkout measures that code with this checkout's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-close}; secs=${2:-5}; extra=${3:-}
py=$PWD/.venv/bin/python
cd "${CODE_DIR:-.}"
port=$($py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
hdr=(); [[ $mode == close ]] && hdr=(-H 'Connection: close')
setsid $py -m gunicorn -w 2 -k gunicorn_fdpass.Worker -b 127.0.0.1:$port \
    --log-level warning examples.hello:app >/tmp/master_cost.$$.log 2>&1 &
gpid=$!
trap 'kill -TERM $gpid 2>/dev/null; wait $gpid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs http://127.0.0.1:$port/ >/dev/null 2>&1 && break; sleep 0.1; done
ticks() { awk '{print $14+$15}' /proc/$gpid/stat; }
reqs() { sed -n 's/^ *\([0-9]*\) requests in.*/\1/p'; }
wrk -t1 -c16 -d1 "${hdr[@]}" http://127.0.0.1:$port/ >/dev/null
t0=$(ticks); n=$(wrk -t1 -c16 -d"$secs" "${hdr[@]}" http://127.0.0.1:$port/ | reqs); t1=$(ticks)
hz=$(getconf CLK_TCK)
echo "mode=$mode requests=$n master_ticks=$((t1-t0)) us_per=$(echo "scale=1; ($t1-$t0)*1000000/$hz/$n" | bc) rps=$((n/secs))"
if [[ $extra == strace ]]; then
    strace -c -f -p $gpid -o /tmp/master_cost.strace &
    spid=$!; sleep 0.5
    n=$(wrk -t1 -c16 -d"$secs" "${hdr[@]}" http://127.0.0.1:$port/ | reqs)
    kill -INT $spid; wait $spid || true
    awk -v n="$n" 'NR>2 && $NF!="total" && $4 ~ /^[0-9]+$/ {e=($5 ~ /^[0-9]+$/)?$5:0; printf "%-14s %6.2f per conn (%5.2f errors)\n", $NF, $4/n, e/n}' /tmp/master_cost.strace
    echo "(strace run: $n requests)"
fi
if [[ $extra == perf ]]; then
    perf record -g -p $gpid -o /tmp/master.perf -- sleep "$secs" >/dev/null 2>&1 &
    ppid=$!
    wrk -t1 -c16 -d"$secs" "${hdr[@]}" http://127.0.0.1:$port/ >/dev/null
    wait $ppid || true
fi
