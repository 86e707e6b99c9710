# Sourced by each block of README's tour (`. tour/env.sh`), so that every block
# runs on its own, in any shell: where the daemon is, which parleyd binary
# mints tokens, the service key, one-day tokens for Ann, Bob and an operator,
# and Ann's conversation about the kayak listing (once the listing exists).
# URL and PARLEYD may be set beforehand to point elsewhere.
PARLEYD=${PARLEYD:-target/release/parleyd}
URL=${URL:-http://127.0.0.1:8080}
# The Python that has the tour's packages (the setup block's virtualenv).
PYTHON=${PYTHON:-target/tour-venv/bin/python}
SERVICE=example-service-key-change-me        # auth.service_key in config.yaml
# JWTs signed with auth.jwt_secret of ./config.yaml, valid for a day.
ANN=$($PARLEYD token --sub ann --role customer --ttl 24h)
BOB=$($PARLEYD token --sub bob --role provider --ttl 24h)
OPS=$($PARLEYD token --sub ops --role operator --ttl 24h)
# Opening a conversation that is open returns it (200), so this only looks it
# up; empty while the listing is not registered, or no daemon is running.
CONV=$(curl -s -X POST "$URL/v1/conversations" -H "Authorization: Bearer $ANN" \
       -d '{"listing_id":"kayak"}' 2>/dev/null |
       python3 -c 'import json, sys
try:
    print(json.load(sys.stdin).get("id", ""))
except ValueError:
    pass' || true)
