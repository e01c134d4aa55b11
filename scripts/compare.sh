#!/usr/bin/env bash
# jobs beside OpenSSH on this machine's loopback, in one run: a private
# sshd (its own host key, config and port on 127.0.0.1, stopped by PID) and
# a jobsd (release build, its own CA, stopped by PID), then the same work
# through each, printing every pair and the ratio:
#   - a cold `jobs run -- true` (new CLI process, full mTLS handshake)
#     against a cold `ssh host true` (new process, full SSH handshake);
#   - `seq 1 20000000 > /dev/null` and `head -c 2G /dev/zero > /dev/null`
#     through `jobs run` against a warm ssh connection (ControlMaster)
#     with aes128-gcm.
# As root, jobsd contains its jobs (cgroup, own uid, namespaces, sandbox),
# as an operator runs it; sshd runs the command as this user, uncontained.
# Installs openssh-server when sshd is missing and this runs as root.
# Usage: bash scripts/compare.sh   (COMPARE_ROUNDS=N for the cold runs, default 20)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${COMPARE_ROUNDS:-20}
sshd=/usr/sbin/sshd
if [ ! -x "$sshd" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing openssh-server (for sshd)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server openssh-client </dev/null >/dev/null
  else
    echo "compare.sh: $sshd not found; install openssh-server (as root: apt-get install openssh-server)" >&2
    exit 1
  fi
fi

cargo build --locked --release --bins >&2
bin=${CARGO_TARGET_DIR:-target}/release

tmp=$(mktemp -d)
jobsd_pid= sshd_pid=
cleanup() {
  for pid in "$jobsd_pid" "$sshd_pid"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

# jobsd, its CA and one client.
{
  "$bin/jobs-ca" init --dir "$tmp/certs"
  "$bin/jobs-ca" server --dir "$tmp/certs"
  "$bin/jobs-ca" client alice --dir "$tmp/certs"
} >"$tmp/ca.log" 2>&1 || { cat "$tmp/ca.log" >&2; exit 1; }
mkfifo "$tmp/ready"
"$bin/jobsd" --listen 127.0.0.1:0 \
  --ca "$tmp/certs/ca.crt" --cert "$tmp/certs/server.crt" --key "$tmp/certs/server.key" \
  --state-dir "$tmp/state" --max-output 4G \
  >"$tmp/ready" 2>>"$tmp/jobsd.log" &
jobsd_pid=$!
exec 3<"$tmp/ready"
if ! read -r -t 30 line <&3; then
  echo "jobsd did not start; its log:" >&2
  cat "$tmp/jobsd.log" >&2
  exit 1
fi
export JOBS_ADDR="${line#listening on }" JOBS_CA="$tmp/certs/ca.crt"
export JOBS_CERT="$tmp/certs/alice.crt" JOBS_KEY="$tmp/certs/alice.key"

# sshd on a free loopback port, with keys of its own.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ssh-keygen -q -t ed25519 -N '' -f "$tmp/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$tmp/user_key"
cp "$tmp/user_key.pub" "$tmp/authorized_keys"
cat >"$tmp/sshd_config" <<EOF
ListenAddress 127.0.0.1:$port
HostKey $tmp/host_key
AuthorizedKeysFile $tmp/authorized_keys
PidFile $tmp/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Ciphers aes128-gcm@openssh.com
EOF
mkdir -p /run/sshd 2>/dev/null || true
"$sshd" -D -e -f "$tmp/sshd_config" 2>>"$tmp/sshd.log" &
sshd_pid=$!
ssh_base=(ssh -F /dev/null -i "$tmp/user_key" -p "$port" -c aes128-gcm@openssh.com
  -o BatchMode=yes -o UserKnownHostsFile="$tmp/known_hosts" -o StrictHostKeyChecking=accept-new
  -o LogLevel=ERROR)
for _ in $(seq 50); do
  "${ssh_base[@]}" 127.0.0.1 true 2>/dev/null && break
  sleep 0.1
done
"${ssh_base[@]}" 127.0.0.1 true || { echo "sshd did not answer; its log:" >&2; cat "$tmp/sshd.log" >&2; exit 1; }
warm=("${ssh_base[@]}" -o ControlMaster=auto -o ControlPath="$tmp/cm" -o ControlPersist=120)
"${warm[@]}" 127.0.0.1 true

# Seconds one run of "$@" takes.
timed() {
  local start end
  start=$(date +%s%N)
  "$@"
  end=$(date +%s%N)
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.4f\n", (e - s) / 1e9 }'
}

# Median of the numbers on stdin.
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

pair() { # name jobs-seconds ssh-seconds
  awk -v n="$1" -v j="$2" -v s="$3" 'BEGIN { printf "%-56s jobs %8.3f s   ssh %8.3f s   jobs/ssh %5.2f\n", n, j, s, j / s }'
}

echo "jobs beside OpenSSH $(ssh -V 2>&1 | cut -d, -f1) on 127.0.0.1, $(nproc) cores, $([ "$(id -u)" = 0 ] && echo "jobs contained" || echo "jobs not contained (not root)")"
j=$(for _ in $(seq "$rounds"); do timed "$bin/jobs" run -- true; done | median)
s=$(for _ in $(seq "$rounds"); do timed "${ssh_base[@]}" 127.0.0.1 true; done | median)
pair "cold run true (median of $rounds)" "$j" "$s"

# Single runs of these vary by a fifth or more here, for ssh too: medians
# of three, jobs and ssh taking turns.
j=() s=()
for _ in 1 2 3; do
  j+=("$(timed sh -c '"$0" run -- seq 1 20000000 >/dev/null' "$bin/jobs")")
  s+=("$(timed sh -c '"$@" 127.0.0.1 seq 1 20000000 >/dev/null' ssh "${warm[@]}")")
done
pair "seq 1 20000000 > /dev/null (warm ssh; median of 3)" \
  "$(printf '%s\n' "${j[@]}" | median)" "$(printf '%s\n' "${s[@]}" | median)"

j=() s=()
for _ in 1 2 3; do
  j+=("$(timed sh -c '"$0" run -- head -c 2G /dev/zero >/dev/null' "$bin/jobs")")
  s+=("$(timed sh -c '"$@" 127.0.0.1 head -c 2G /dev/zero >/dev/null' ssh "${warm[@]}")")
done
j=$(printf '%s\n' "${j[@]}" | median) s=$(printf '%s\n' "${s[@]}" | median)
pair "head -c 2G /dev/zero > /dev/null (warm ssh; median of 3)" "$j" "$s"
awk -v j="$j" -v s="$s" 'BEGIN { printf "(2 GiB: jobs %.0f MB/s, ssh %.0f MB/s)\n", 2147.483648 / j, 2147.483648 / s }'
