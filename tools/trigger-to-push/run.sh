#!/usr/bin/env bash
# run.sh REPO [CONNS RATE DUR WARM]: side by side, automation off / shipped
# rules / every message pushed at once; prints the loadgen summary of each and
# the push receiver's trigger-to-push figures (warm-up included). BENCH is a
# writable copy of the neutral benchmark (shared/bench, with `npm ci` run in
# loadgen/); REPO has a release build (cargo build --release).
set -u
repo=$1 conns=${2:-10000} rate=${3:-3000} dur=${4:-20} warm=${5:-5}
here=$(cd "$(dirname "$0")" && pwd)
port=47123
pkill -f "receiver.js $port" 2>/dev/null; sleep 0.5
node "$here/receiver.js" $port > "$here/receiver.log" 2>&1 &
rpid=$!
trap 'kill $rpid 2>/dev/null' EXIT
sleep 1
"$here/setup.sh" "$repo" "$here/cfg" "http://127.0.0.1:$port/push" > /dev/null || exit 1
cd "${BENCH:?set BENCH to a writable copy of the neutral benchmark}"
for v in off shipped on; do
  curl -s -XPOST localhost:$port/reset > /dev/null
  echo "=== $v ($conns connections, $rate msg/s, $dur s + $warm s)"
  PARLEYD_BIN=$repo/target/release/parleyd PARLEYD_CONFIG=$here/cfg/$v/config.yaml \
    ./bench.sh parleyd "$conns" "$rate" "$dur" "$warm" 2>&1 | grep -E "^(messages|throughput|ack latency|delivery latency|server|machine|\[bench\])"
  echo "trigger-to-push: $(curl -s localhost:$port/stats)"
done
