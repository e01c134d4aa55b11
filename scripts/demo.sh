#!/usr/bin/env bash
# The whole product on real input, on loopback, in a temporary directory:
# certificates issued, jobsd started, a real job run and followed as alice,
# bob refused, everything shut down. Usage: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Building (first build takes a few minutes)"
cargo build --locked --bins
bin=${CARGO_TARGET_DIR:-target}/debug

tmp=$(mktemp -d)
jobsd_pid=
cleanup() {
  if [ -n "$jobsd_pid" ] && kill -0 "$jobsd_pid" 2>/dev/null; then
    kill -TERM "$jobsd_pid" 2>/dev/null || true
    wait "$jobsd_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

say "Issuing a CA, a server certificate and certificates for alice and bob (RSA-4096)"
"$bin/jobs-ca" init --dir "$tmp/certs"
"$bin/jobs-ca" server --dir "$tmp/certs"
alice=$("$bin/jobs-ca" client alice --dir "$tmp/certs")
bob=$("$bin/jobs-ca" client bob --dir "$tmp/certs")
echo "alice is $alice"
echo "bob   is $bob"

say "Starting jobsd on 127.0.0.1 (a free port)"
mkfifo "$tmp/ready"
"$bin/jobsd" --listen 127.0.0.1:0 \
  --ca "$tmp/certs/ca.crt" --cert "$tmp/certs/server.crt" --key "$tmp/certs/server.key" \
  --state-dir "$tmp/state" >"$tmp/ready" 2>"$tmp/jobsd.log" &
jobsd_pid=$!
exec 3<"$tmp/ready"
if ! read -r -t 30 line <&3; then
  echo "jobsd did not start; its log:" >&2
  cat "$tmp/jobsd.log" >&2
  exit 1
fi
addr=${line#listening on }
echo "jobsd: $line"

export JOBS_ADDR="$addr" JOBS_CA="$tmp/certs/ca.crt"
as_alice() { JOBS_CERT="$tmp/certs/alice.crt" JOBS_KEY="$tmp/certs/alice.key" "$bin/jobs" "$@"; }
as_bob() { JOBS_CERT="$tmp/certs/bob.crt" JOBS_KEY="$tmp/certs/bob.key" "$bin/jobs" "$@"; }

say "alice starts a job and follows its output live"
id=$(as_alice start -- /bin/sh -c 'for i in 1 2 3 4 5; do echo "tick $i on $(uname -n)"; sleep 0.4; done; echo "done" >&2')
echo "job id: $id"
as_alice stream "$id"
as_alice status "$id"

say "bob tries to read, follow and stop alice's job"
for cmd in status output stream stop; do
  printf '$ jobs %s %s   (as bob)\n' "$cmd" "$id"
  if as_bob "$cmd" "$id"; then
    echo "UNEXPECTED: bob's '$cmd' succeeded" >&2
    exit 1
  fi
done
echo "$ jobs list   (as bob; alice's job is not there)"
as_bob list

if [ "$(id -u)" = 0 ]; then
  say "Containment: each job has its own cgroup, account and namespaces"
  grep -E 'cgroup layout|jobs are contained' "$tmp/jobsd.log" | sed 's/^/jobsd log: /' || true
  echo '$ jobs run -- sh -c '"'"'id; echo "processes visible: $(ls /proc | grep -c "^[0-9]")"'"'"
  as_alice run -- sh -c 'id; echo "processes visible: $(ls /proc | grep -c "^[0-9]")"'
  echo '$ jobs run --memory 32M -- sh -c '"'"'x=$(head -c 200M /dev/zero | tr "\0" a); echo survived'"'"'   (a memory hog)'
  as_alice run --memory 32M -- sh -c 'x=$(head -c 200M /dev/zero | tr "\0" a); echo survived' || echo "(exit code $?)"
  hog=$(as_alice list | tail -n 1 | cut -d' ' -f1)
  as_alice status "$hog"
else
  say "Containment is OFF: jobsd does not run as root here"
  grep -E 'containment is OFF' "$tmp/jobsd.log" | sed 's/^/jobsd log: /' || true
fi

say "alice runs a job and stops it"
id=$(as_alice start -- sleep 600)
as_alice stop "$id"

say "Shutting jobsd down (SIGTERM)"
kill -TERM "$jobsd_pid"
wait "$jobsd_pid"
jobsd_pid=
echo "jobsd exited cleanly"
