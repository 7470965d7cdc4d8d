#!/bin/sh
# drain.sh SOCKET BACKEND/SERVER [SECONDS]
#
# Take one server out of HAProxy's rotation before stopping it (docs/deploying.rst):
# "set server BACKEND/SERVER state drain" on HAProxy's admin socket sends it no new
# connection (its open ones carry on), then wait up to SECONDS (default 30) until none
# is open.  Exit 0 once drained, 1 if connections remain at the deadline (long-lived
# frame connections: sockproto's own drain on SIGTERM then closes them, and their
# clients reconnect through HAProxy to the other servers).
# Needs socat.  Tested by tests/deploy/test_haproxy.py.
set -eu
socket=$1
server=$2
limit=${3:-30}
backend=${server%/*}
name=${server#*/}

echo "set server $server state drain" | socat stdio "unix-connect:$socket"
ticks=0
while :; do
    # show stat is CSV: pxname, svname, qcur, qmax, scur (current sessions), ...
    current=$(echo "show stat" | socat stdio "unix-connect:$socket" |
        awk -F, -v b="$backend" -v s="$name" '$1 == b && $2 == s { print $5 }')
    if [ "$current" = 0 ]; then
        exit 0
    fi
    if [ "$ticks" -ge $((limit * 10)) ]; then
        echo "drain.sh: $server still has ${current:-?} connection(s) open after $limit s" >&2
        exit 1
    fi
    sleep 0.1
    ticks=$((ticks + 1))
done
