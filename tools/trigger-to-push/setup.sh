#!/usr/bin/env bash
# setup.sh REPO OUT PUSH_URL: writes OUT/on (automation + routing with an
# immediate push of every person's message first), OUT/shipped (the shipped
# rules) and OUT/off (contact rules only),
# each with a config.yaml pointing at its rules and at PUSH_URL.
set -eu
repo=$1 out=$2 push=$3
rm -rf "$out"; mkdir -p "$out/on" "$out/shipped" "$out/off/rules" "$out/off/templates" "$out/off/plugins"
for v in on shipped; do
  cp -r "$repo/rules" "$repo/templates" "$repo/plugins" "$out/$v/"
  rm -rf "$out/$v/rules/tests"
done
python3 - "$out/on/rules/routing.yaml" <<'Y'
import sys
path = sys.argv[1]
text = open(path).read()
route = """  - name: bench_push
    description: Every person's message pushed at once to its recipient (trigger-to-push measurement).
    on: [message_sent]
    to: recipient
    priority: high
    channels: [push]
    template: bench_push

"""
i = text.index("notifications:\n") + len("notifications:\n")
open(path, "w").write(text[:i] + route + text[i:])
Y
cat >> "$out/on/templates/notifications.yaml" <<'Y'

bench_push:
  subject: "bench"
  text: "{event.at}"
Y
cp "$repo/rules/contact.yaml" "$out/off/rules/"
# One address (the generator) holds every connection.
for v in on shipped off; do
  sed -e "s|^  push_url: null|  push_url: \"$push\"|" -e "s|^  max_per_address: .*|  max_per_address: 20000|" -e "s|^  max_open: .*|  max_open: 40000|" \
    "$repo/config.yaml" > "$out/$v/config.yaml"
done
"$repo/target/release/parleyd" check --config "$out/on/config.yaml"
"$repo/target/release/parleyd" check --config "$out/off/config.yaml"
"$repo/target/release/parleyd" check --config "$out/shipped/config.yaml"
