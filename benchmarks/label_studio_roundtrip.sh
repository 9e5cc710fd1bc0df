#!/usr/bin/env bash
# Label Studio round trip for `ntt-batch corrections`, against a real Label Studio server.
#
#   benchmarks/label_studio_roundtrip.sh [FIXTURE_DIR]      (default: tests/data/label_studio)
#
# 1. a tiny job output with planted mistakes, built from coco_mini val2017 ground truth
#    (benchmarks/label_studio_job.py; no model) → FIXTURE_DIR/out/ + FIXTURE_DIR/review_key.json;
# 2. `ntt-batch export --format label-studio` → FIXTURE_DIR/tasks.json + tasks.label_config.xml;
# 3. Label Studio 1.23.2 in its own virtualenv ($LS_VENV, created with pip if missing), started on
#    127.0.0.1 only, signup disabled, a throwaway user and legacy API token (random, never
#    written down), its data in a temporary folder, local file serving rooted at coco_mini;
# 4. benchmarks/label_studio_reviewer.py (in that virtualenv) creates the project with our labeling
#    config, connects Local Storage, imports the tasks, reviews them through the API (skip one,
#    accept, delete false positives, relabel one, paint a missed object with the brush, draw another
#    as a polygon) and exports the project as JSON → FIXTURE_DIR/export.json (+ reviewer_actions.json);
# 5. `ntt-batch corrections` on that export (printed; tests/test_corrections.py checks it all).
# The log of the whole run goes to FIXTURE_DIR/roundtrip.log.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
FIX=$(mkdir -p "${1:-$REPO/tests/data/label_studio}" && cd "${1:-$REPO/tests/data/label_studio}" && pwd)
DATA=${NTT_SHARED_DATA:-$REPO/../shared/data}/coco_mini
LS_VENV=${LS_VENV:-$REPO/../ls-server-venv}
LS_VERSION=1.23.2
PORT=${LS_PORT:-18080}
URL=http://127.0.0.1:$PORT
PY=${PYTHON:-python3}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
exec > >(tee "$FIX/roundtrip.log") 2>&1
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) ntt-batch $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?'), data $DATA"

if [ ! -x "$LS_VENV/bin/label-studio" ]; then
  echo "== creating $LS_VENV (label-studio==$LS_VERSION)"
  python3 -m venv "$LS_VENV"
  "$LS_VENV/bin/pip" install -q "label-studio==$LS_VERSION"
fi
echo "== label-studio $("$LS_VENV/bin/python" -c 'import label_studio; print(label_studio.__version__)'), Python $("$LS_VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"

echo "== 1. job output with planted mistakes"
rm -rf "$FIX/out"
"$PY" "$REPO/benchmarks/label_studio_job.py" --data "$DATA" --out "$FIX/out" --key "$FIX/review_key.json"

echo "== 2. Label Studio tasks (ntt-batch export --format label-studio)"
"$PY" -m ntt_batch.cli merge --shards "$FIX/out" --out "$FIX/tasks.json" --format label-studio \
  --image-root "$DATA" --image-url-prefix "/data/local-files/?d="

echo "== 3. Label Studio server on $URL (loopback only)"
TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(20))')
PASSWORD=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(16))')
(
  cd "$WORK"
  exec env SENTRY_DSN= FRONTEND_SENTRY_DSN= COLLECT_ANALYTICS=false \
    LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true \
    LABEL_STUDIO_USERNAME=reviewer@example.com LABEL_STUDIO_PASSWORD="$PASSWORD" LABEL_STUDIO_USER_TOKEN="$TOKEN" \
    LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="$DATA" \
    "$LS_VENV/bin/label-studio" start --no-browser --internal-host 127.0.0.1 --host "$URL" --port "$PORT" \
    --data-dir "$WORK/ls-data" --enable-legacy-api-token >"$WORK/server.log" 2>&1
) &
SERVER_PID=$!
for i in $(seq 1 120); do
  if curl -fs -o /dev/null "$URL/health"; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then tail -40 "$WORK/server.log"; echo "Label Studio did not start"; exit 1; fi
  sleep 2
done
curl -fs -o /dev/null "$URL/health" || { tail -40 "$WORK/server.log"; echo "Label Studio not up after 240 s"; exit 1; }
echo "up after ~$((i * 2)) s; listening: $(ss -ltn 2>/dev/null | awk -v p=":$PORT" '$4 ~ p"$" {print $4}' | tr '\n' ' ')"

echo "== 4. review through the API, export JSON"
"$LS_VENV/bin/python" "$REPO/benchmarks/label_studio_reviewer.py" --url "$URL" --token "$TOKEN" \
  --tasks "$FIX/tasks.json" --config "$FIX/tasks.label_config.xml" --key "$FIX/review_key.json" \
  --image-folder "$DATA/val2017" --export "$FIX/export.json" --actions "$FIX/reviewer_actions.json"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
echo "server stopped"

echo "== 5. ntt-batch corrections --label-studio"
"$PY" -m ntt_batch.cli corrections --shards "$FIX/out" --label-studio "$FIX/export.json" --out "$WORK/corrections"
du -sh "$FIX" | cut -f1 | sed 's/^/fixture size: /'
