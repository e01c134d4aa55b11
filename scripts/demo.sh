#!/usr/bin/env bash
# The whole product on real input, on loopback, in a temporary directory:
# certificates issued (a batch by the admin; bob's from his own key and
# request, then renewed with the same key), jobsd started with a policy and an
# audit log, a real job run and followed as alice, bob refused, an admin stopping alice's job,
# bob denylisted by a policy reload, an output quota, jobsd killed and
# restarted with every job still listed (a running one lost), everything
# shut down.
# Usage: bash scripts/demo.sh
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

say "The admin issues a CA, the server certificate, and alice's and carol's in one batch (RSA-4096)"
"$bin/jobs-ca" init --dir "$tmp/certs"
"$bin/jobs-ca" server --dir "$tmp/certs"
ids=$("$bin/jobs-ca" client alice carol --dir "$tmp/certs")   # keys made in parallel
alice=$(awk '$2 == "alice" { print $1 }' <<<"$ids")
carol=$(awk '$2 == "carol" { print $1 }' <<<"$ids")

say "bob makes his own key and request; the admin signs the request (bob's key never leaves his directory)"
bob=$("$bin/jobs-ca" request bob --dir "$tmp/bob")
"$bin/jobs-ca" sign "$tmp/bob/bob.csr" --dir "$tmp/certs" >/dev/null
ls "$tmp/bob"
echo "alice is $alice"
echo "bob   is $bob"
echo "carol is $carol (an admin in the policy below)"
"$bin/jobs-ca" list --dir "$tmp/certs"

say "The policy: carol is an admin; 5 running jobs and 1 MiB of output per job for everyone"
policy() {  # policy DENYLIST
  cat >"$tmp/policy.toml" <<EOF
denylist = [$1]
admins = ["$carol"]

[rate]
requests_per_second = 50

[quota]
max_running_jobs = 5
max_output_bytes = "1M"
EOF
}
policy ""
cat "$tmp/policy.toml"
"$bin/jobsd" --policy "$tmp/policy.toml" --check-policy

# Starts jobsd on a free loopback port and sets $addr once it listens.
start_jobsd() {
  rm -f "$tmp/ready"
  mkfifo "$tmp/ready"
  "$bin/jobsd" --listen 127.0.0.1:0 \
    --ca "$tmp/certs/ca.crt" --cert "$tmp/certs/server.crt" --key "$tmp/certs/server.key" \
    --state-dir "$tmp/state" --policy "$tmp/policy.toml" --audit-log "$tmp/audit.jsonl" \
    >"$tmp/ready" 2>>"$tmp/jobsd.log" &
  jobsd_pid=$!
  exec 3<"$tmp/ready"
  if ! read -r -t 30 line <&3; then
    echo "jobsd did not start; its log:" >&2
    cat "$tmp/jobsd.log" >&2
    exit 1
  fi
  addr=${line#listening on }
  echo "jobsd: $line"
}

say "Starting jobsd on 127.0.0.1 (a free port)"
start_jobsd

export JOBS_ADDR="$addr" JOBS_CA="$tmp/certs/ca.crt"
as_alice() { JOBS_CERT="$tmp/certs/alice.crt" JOBS_KEY="$tmp/certs/alice.key" "$bin/jobs" "$@"; }
as_bob() { JOBS_CERT="$tmp/bob/bob.crt" JOBS_KEY="$tmp/bob/bob.key" "$bin/jobs" "$@"; }
as_carol() { JOBS_CERT="$tmp/certs/carol.crt" JOBS_KEY="$tmp/certs/carol.key" "$bin/jobs" "$@"; }

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

say "bob renews his certificate with the same key: same identity, his jobs stay his"
bob_job=$(as_bob start -- echo "bob was here")
"$bin/jobs-ca" request bob --dir "$tmp/bob" --renew >/dev/null
"$bin/jobs-ca" sign "$tmp/bob/bob.csr" --dir "$tmp/certs" >/dev/null
"$bin/jobs-ca" list --dir "$tmp/certs" | awk 'NR == 1 || $1 == "bob"'
echo "$ jobs stream $bob_job   (as bob, with the renewed certificate)"
as_bob stream "$bob_job"
echo "$ jobs-ca sign bob.csr --name mallory   (the same key under a second name)"
if "$bin/jobs-ca" sign "$tmp/bob/bob.csr" --dir "$tmp/certs" --name mallory --out "$tmp/mallory.crt"; then
  echo "UNEXPECTED: bob's key was issued a second identity" >&2
  exit 1
fi

if [ "$(id -u)" = 0 ]; then
  say "Containment: each job has its own cgroup, account, namespaces and kernel sandbox"
  grep -E 'cgroup layout|sandbox: ' "$tmp/jobsd.log" | sed 's/^/jobsd log: /' || true
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

say "carol, an admin, lists every user's jobs and stops one of alice's"
id=$(as_alice start -- sleep 600)
echo '$ jobs list --all   (as carol)'
as_carol list --all
echo "$ jobs stop $id   (as carol)"
as_carol stop "$id"
echo '$ jobs list --all   (as bob, not an admin)'
if as_bob list --all; then
  echo "UNEXPECTED: bob listed every user's jobs" >&2
  exit 1
fi

say "Output quota: a job that writes forever is stopped at 1 MiB"
echo '$ jobs run -- yes | wc -c'
as_alice run -- yes | wc -c || echo "(jobs run exited with $?: the job was stopped)"
as_alice status "$(as_alice list | tail -n 1 | cut -d' ' -f1)"

say "The operator denylists bob and reloads the policy (SIGHUP)"
policy "\"$bob\""
kill -HUP "$jobsd_pid"
wait_log() { for _ in $(seq 100); do grep -q "$1" "$tmp/jobsd.log" && return 0; sleep 0.1; done; return 1; }
wait_log 'policy reloaded'
grep 'policy reloaded' "$tmp/jobsd.log" | sed 's/^/jobsd log: /'
echo '$ jobs list   (as bob)'
if as_bob list; then
  echo "UNEXPECTED: denylisted bob was served" >&2
  exit 1
fi
say "A broken policy is refused on reload and the old one stays"
printf 'denylst = ["%s"]\n' "$bob" >"$tmp/policy.toml"
cat "$tmp/policy.toml"
kill -HUP "$jobsd_pid"
wait_log 'policy NOT reloaded'
grep 'policy NOT reloaded' "$tmp/jobsd.log" | sed 's/^/jobsd log: /'
echo '$ jobs list   (as bob)'
if as_bob list; then
  echo "UNEXPECTED: bob was served after a broken reload" >&2
  exit 1
fi

say "The audit log: one JSON line per decision (last 4 of $(wc -l <"$tmp/audit.jsonl"))"
tail -n 4 "$tmp/audit.jsonl"

say "Durable state: jobsd is killed (SIGKILL) while one of alice's jobs runs"
policy "\"$bob\""   # the operator fixes the broken file before the restart
finished=$(as_alice start -- /bin/sh -c 'echo "kept across restarts"')
as_alice stream "$finished" >/dev/null
running=$(as_alice start -- /bin/sh -c 'echo "written before the crash"; exec sleep 600')
until [ -n "$(as_alice output "$running")" ]; do sleep 0.1; done
kill -KILL "$jobsd_pid"
wait "$jobsd_pid" 2>/dev/null || true
echo "jobsd killed; starting a new one on the same state directory"
start_jobsd
export JOBS_ADDR="$addr"
echo '$ jobs list   (as alice, after the restart)'
as_alice list
echo "$ jobs output $finished"
as_alice output "$finished"
echo "$ jobs status $running"
as_alice status "$running"
echo "$ jobs output $running"
as_alice output "$running"
grep -E 'marked lost|killed what a dead daemon' "$tmp/jobsd.log" | sed 's/^/jobsd log: /' || true
echo "$ jobs rm $finished; jobs status $finished"
as_alice rm "$finished"
if as_alice status "$finished"; then
  echo "UNEXPECTED: a removed job is still there" >&2
  exit 1
fi

say "Shutting jobsd down (SIGTERM)"
kill -TERM "$jobsd_pid"
wait "$jobsd_pid"
jobsd_pid=
echo "jobsd exited cleanly"
