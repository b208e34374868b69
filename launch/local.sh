#!/usr/bin/env bash
# N kd_jax processes on this machine, joined by jax.distributed on 127.0.0.1, each with its own
# fake CPU devices: the multi-host code path without a cluster.
set -euo pipefail

PROG="launch/local.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/local.sh [OPTIONS] N CONFIG [KD_JAX_ARGS...]

Starts N processes of `python -m kd_jax.main --config CONFIG KD_JAX_ARGS...` here. Process i runs
on the CPU with its own K devices (JAX_PLATFORMS=cpu,
XLA_FLAGS=--xla_force_host_platform_device_count=K) and joins the others through
  KD_JAX_DISTRIBUTED=1  KD_JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>
  KD_JAX_NUM_PROCESSES=N  KD_JAX_PROCESS_ID=i
so the run sees N*K global devices, as on N hosts. Waits for all and returns as soon as all have
ended; when one fails the others are stopped and the exit status is that of the first failure.
A process still running FINISH_GRACE_S seconds (default 180) after another one succeeded is
named and stopped (status 124); kd_jax processes leave together within KD_JAX_SHUTDOWN_TIMEOUT_S
(default 120). When process 0 finds its coordinator port taken (exit 75), all start again on
another port. Process i logs to LOG_DIR/process<i>.log.

Options:
  --devices K    CPU devices per process (default 2)
  --port P       coordinator port (default: a free one below the ephemeral range)
  --python PY    Python to run (default: $KD_JAX_PYTHON, the active virtualenv, REPO/.venv, python3)
  --log-dir DIR  where the per-process logs go (default: runs/launch_logs/local-<time>)
  --dry-run      print the commands instead of running them
  -h, --help     this help

Example:
  launch/local.sh 2 configs/smoke.py --workdir runs/smoke_2proc
EOF
}

devices=2 port="" python="" log_dir=""
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --devices) need "$@"; devices=$2; shift ;;
    --devices=*) devices=${1#*=} ;;
    --port) need "$@"; port=$2; shift ;;
    --port=*) port=${1#*=} ;;
    --python) need "$@"; python=$2; shift ;;
    --python=*) python=${1#*=} ;;
    --log-dir) need "$@"; log_dir=$2; shift ;;
    --log-dir=*) log_dir=${1#*=} ;;
    -*) die "unknown option '$1' before N (see launch/local.sh --help)" ;;
    *) break ;;
  esac
  shift
done
[[ $# -ge 2 ]] || die "usage: launch/local.sh [OPTIONS] N CONFIG [KD_JAX_ARGS...] (see --help)"
n=$1
shift
[[ $n =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number of processes, got '$n'"
[[ $devices =~ ^[1-9][0-9]*$ ]] || die "--devices must be a positive integer, got '$devices'"
if [[ -z $python ]]; then
  if [[ -n ${KD_JAX_PYTHON:-} ]]; then
    python=$KD_JAX_PYTHON
  elif [[ -n ${VIRTUAL_ENV:-} && -x $VIRTUAL_ENV/bin/python ]]; then
    python="$VIRTUAL_ENV/bin/python"
  elif [[ -x $REPO_DIR/.venv/bin/python ]]; then
    python="$REPO_DIR/.venv/bin/python"
  else
    python=python3
  fi
fi
# A free port below the kernel's ephemeral range, so that no outgoing connection (another job's
# gRPC or gloo sockets) takes it between the pick and process 0's bind. Checked with a plain bind:
# XLA's coordinator binds with SO_REUSEPORT, so a second coordinator on a taken port would not fail
# but share the port with the first job.
pick_port() {
  local picker=python3
  command -v python3 >/dev/null || picker=$python
  "$picker" - <<'PY' || die "could not pick a free port with $picker; pass --port"
import random, socket
try:
  low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
  low = 32768
low = low if low > 12000 else 61000
def free(port):
  for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
    try:
      s = socket.socket(family)
    except OSError:  # No IPv6 here.
      continue
    with s:
      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      try:
        s.bind((host, port))
        return True
      except OSError:
        return False
  return False
port = next((p for p in (random.randrange(10000, low) for _ in range(100)) if free(p)), None)
if port is None:
  raise SystemExit("no free port found")
print(port)
PY
}
if [[ -n $port ]]; then
  [[ $port =~ ^[0-9]+$ ]] || die "--port must be a number, got '$port'"
  fixed_port=1
else
  fixed_port=0
  if ((DRY_RUN)); then port=PORT; else port=$(pick_port); fi
fi
log_dir=${log_dir:-$REPO_DIR/runs/launch_logs/local-$(date -u +%Y%m%d-%H%M%S)-$$}

# Any device-count flag already in XLA_FLAGS would fight ours; keep the other flags.
xla_flags="$(sed -E 's/--xla_force_host_platform_device_count=[^ ]*//g; s/  +/ /g; s/^ //; s/ $//' <<<"${XLA_FLAGS:-}")"
xla_flags="${xla_flags:+$xla_flags }--xla_force_host_platform_device_count=$devices"

run_proc() {
  local i=$1
  shift
  env JAX_PLATFORMS=cpu "XLA_FLAGS=$xla_flags" KD_JAX_DISTRIBUTED=1 \
    "KD_JAX_COORDINATOR_ADDRESS=127.0.0.1:$port" "KD_JAX_NUM_PROCESSES=$n" "KD_JAX_PROCESS_ID=$i" \
    "$python" -m kd_jax.main --config "$@"
}

if ((DRY_RUN)); then
  echo "mkdir -p $(quote "$log_dir")"
  for ((i = 0; i < n; i++)); do
    echo "$(quote env JAX_PLATFORMS=cpu "XLA_FLAGS=$xla_flags" KD_JAX_DISTRIBUTED=1 \
      "KD_JAX_COORDINATOR_ADDRESS=127.0.0.1:$port" "KD_JAX_NUM_PROCESSES=$n" \
      "KD_JAX_PROCESS_ID=$i" "$python" -m kd_jax.main --config "$@") > $(quote "$log_dir/process$i.log") 2>&1 &"
  done
  echo "wait  # if one exits non-zero, the others are killed"
  exit 0
fi

mkdir -p "$log_dir"
pids=()
# SIGTERM first (kd_jax then tries to save a checkpoint); SIGKILL after KILL_GRACE_S seconds,
# because a process whose peer died can block in a collective until the distributed timeout.
KILL_GRACE_S=${KILL_GRACE_S:-10}
cleanup() {
  local p
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  STOP_DEADLINE=$((SECONDS + KILL_GRACE_S))
}
trap 'note "interrupted; stopping all processes"; cleanup; exit 130' INT TERM

# A process left alone after a peer failed would wait for the dead peer until the distributed
# timeout, hence on_failure's cleanup and supervise's SIGKILL after the grace period.
on_failure() {
  if [[ $2 == linger ]]; then
    note "process $1 is still running ${FINISH_GRACE_S} s after another finished (FINISH_GRACE_S);" \
      "stopping all. Last lines of its log:"
  elif [[ $1 == 0 && $2 == 75 ]] && ((!fixed_port)); then
    cleanup # The coordinator port was taken: the others wait for a coordinator that never comes.
    return
  else
    note "process $1 failed (exit $2); stopping the others. Last lines of its log:"
  fi
  tail -n 20 "$log_dir/process$1.log" >&2 || true
  cleanup
}

# Exit status 75 from process 0 means its coordinator port was taken (kd_jax/distributed.py): start
# again on another port, a few times.
for attempt in 1 2 3; do
  pids=()
  for ((i = 0; i < n; i++)); do
    run_proc "$i" "$@" >"$log_dir/process$i.log" 2>&1 </dev/null &
    pids+=($!)
  done
  note "started $n processes x $devices CPU devices, coordinator 127.0.0.1:$port; logs in $log_dir"
  status=0
  supervise 0.2 KILL "${pids[@]}" || status=$?
  ((status == 75 && !fixed_port && attempt < 3)) || break
  note "the coordinator port $port was taken; starting again on another port"
  port=$(pick_port)
done
if ((status == 0)); then
  note "all $n processes finished; process 0 said:"
  tail -n 20 "$log_dir/process0.log" >&2 || true
fi
exit "$status"
