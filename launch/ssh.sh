#!/usr/bin/env bash
# Starts kd_jax on several hosts over plain ssh (no scheduler): one process per host, the first
# host coordinates. Waits for all; if one fails, stops the others.
set -euo pipefail

PROG="launch/ssh.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/ssh.sh (--hosts H1,H2,... | --hosts-file FILE) [OPTIONS] CONFIG [KD_JAX_ARGS...]

Runs `python -m kd_jax.main --config CONFIG KD_JAX_ARGS...` on every host at once, one process
per host using all of its GPUs. Process i gets, through the environment:
  KD_JAX_DISTRIBUTED=1  KD_JAX_COORDINATOR_ADDRESS=<first host>:<port>
  KD_JAX_NUM_PROCESSES=<number of hosts>  KD_JAX_PROCESS_ID=i
which kd_jax passes to jax.distributed.initialize(). Each host's output goes to a local log
file; when one process fails the others are stopped and the exit status is non-zero. A process
still running FINISH_GRACE_S seconds (default 180) after another one succeeded is named and
stopped (status 124); kd_jax processes leave together within KD_JAX_SHUTDOWN_TIMEOUT_S (120).

Hosts need the code at the same path and a working environment (e.g. a shared home, or
launch/host.sh setup --extra cuda on each), and passwordless ssh from here.

Options:
  --hosts LIST        comma-separated [user@]host names; the first one coordinates
  --hosts-file FILE   one [user@]host per line (# comments allowed)
  --port P            coordinator port on the first host (default 8476; must be reachable)
  --coordinator ADDR  coordinator host as the other hosts reach it (default: first host's name)
  --remote-dir DIR    repository on the hosts (default: this repository's path)
  --python PY         Python on the hosts (default: .venv/bin/python inside --remote-dir)
  --env KEY=VALUE     extra environment for every process (repeatable)
  --ssh-opt OPT       extra ssh option, e.g. --ssh-opt=-oStrictHostKeyChecking=no (repeatable)
  --log-dir DIR       local log directory (default: runs/launch_logs/ssh-<time>)
  --dry-run           print the ssh commands instead of running them
  -h, --help          this help
EOF
}

hosts=() port=8476 coordinator="" remote_dir="$REPO_DIR" python="" log_dir=""
env_extra=() ssh_opts=()
add_hosts() { local h; IFS=',' read -r -a h <<<"$1"; hosts+=("${h[@]}"); }
read_hosts_file() {
  [[ -f $1 ]] || die "hosts file $1 not found"
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%%#*}
    line=${line//[[:space:]]/}
    if [[ -n $line ]]; then
      hosts+=("$line")
    fi
  done <"$1"
}
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --hosts) need "$@"; add_hosts "$2"; shift ;;
    --hosts=*) add_hosts "${1#*=}" ;;
    --hosts-file) need "$@"; read_hosts_file "$2"; shift ;;
    --hosts-file=*) read_hosts_file "${1#*=}" ;;
    --port) need "$@"; port=$2; shift ;;
    --port=*) port=${1#*=} ;;
    --coordinator) need "$@"; coordinator=$2; shift ;;
    --coordinator=*) coordinator=${1#*=} ;;
    --remote-dir) need "$@"; remote_dir=$2; shift ;;
    --remote-dir=*) remote_dir=${1#*=} ;;
    --python) need "$@"; python=$2; shift ;;
    --python=*) python=${1#*=} ;;
    --env) need "$@"; env_extra+=("$2"); shift ;;
    --env=*) env_extra+=("${1#*=}") ;;
    --ssh-opt) need "$@"; ssh_opts+=("$2"); shift ;;
    --ssh-opt=*) ssh_opts+=("${1#*=}") ;;
    --log-dir) need "$@"; log_dir=$2; shift ;;
    --log-dir=*) log_dir=${1#*=} ;;
    -*) die "unknown option '$1' before CONFIG (see launch/ssh.sh --help)" ;;
    *) break ;;
  esac
  shift
done
((${#hosts[@]})) || die "no hosts; pass --hosts H1,H2 or --hosts-file FILE"
[[ $# -ge 1 ]] || die "CONFIG is missing, e.g. launch/ssh.sh --hosts a,b configs/smoke.py"
if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
  die "--port must be a TCP port, got '$port'"
fi
for e in "${env_extra[@]}"; do
  [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VALUE, got '$e'"
done
n=${#hosts[@]}
first=${hosts[0]}
coordinator=${coordinator:-${first#*@}}
python=${python:-.venv/bin/python}
run_id="ssh-$(date -u +%Y%m%d-%H%M%S)-$$"
log_dir=${log_dir:-$REPO_DIR/runs/launch_logs/$run_id}

# The remote shell records its pid, then execs into python (same pid), so a failure elsewhere can
# stop exactly this process.
remote_cmd() {
  local i=$1
  local words=(KD_JAX_DISTRIBUTED=1 "KD_JAX_COORDINATOR_ADDRESS=$coordinator:$port"
    "KD_JAX_NUM_PROCESSES=$n" "KD_JAX_PROCESS_ID=$i" "${env_extra[@]}")
  echo "cd $(quote "$remote_dir") && echo \$\$ > /tmp/kd_jax-$run_id-$i.pid &&" \
    "exec env $(quote "${words[@]}") $(quote "$python") -m kd_jax.main --config $(quote "${@:2}")"
}
ssh_base=(ssh -o BatchMode=yes "${ssh_opts[@]}")

if ((DRY_RUN)); then
  for i in "${!hosts[@]}"; do
    echo "$(quote "${ssh_base[@]}" "${hosts[$i]}" "$(remote_cmd "$i" "$@")") > $(quote "$log_dir/host$i-${hosts[$i]#*@}.log") 2>&1 &"
  done
  echo "wait  # if one exits non-zero: ssh HOST 'kill \$(cat /tmp/kd_jax-$run_id-I.pid)' for the others"
  exit 0
fi

mkdir -p "$log_dir"
pids=()
stopped=0
# SIGTERM first (kd_jax then tries to save a checkpoint), SIGKILL after KILL_GRACE_S seconds:
# a process whose peer died can block in a collective until the distributed timeout. The remote
# process outlives a killed ssh client, so it is killed by its recorded pid.
KILL_GRACE_S=${KILL_GRACE_S:-10}
stop_others() {
  ((stopped)) && return 0
  stopped=1
  local i
  for i in "${!hosts[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      note "stopping process $i on ${hosts[$i]}"
      "${ssh_base[@]}" "${hosts[$i]}" "p=\$(cat /tmp/kd_jax-$run_id-$i.pid) && kill \$p &&" \
        "(sleep $KILL_GRACE_S; kill -9 \$p 2>/dev/null) >/dev/null 2>&1 &" </dev/null || true
    fi
  done
  # If an ssh client still has not returned well after that, give up on it.
  STOP_DEADLINE=$((SECONDS + KILL_GRACE_S + 10))
}
trap 'note "interrupted"; stop_others; exit 130' INT TERM

for i in "${!hosts[@]}"; do
  log="$log_dir/host$i-${hosts[$i]#*@}.log"
  "${ssh_base[@]}" "${hosts[$i]}" "$(remote_cmd "$i" "$@")" >"$log" 2>&1 </dev/null &
  pids[i]=$!
done
note "started $n processes (coordinator $coordinator:$port); logs in $log_dir"

on_failure() {
  if [[ $2 == linger ]]; then
    note "process $1 on ${hosts[$1]} is still running ${FINISH_GRACE_S} s after another finished" \
      "(FINISH_GRACE_S); stopping all. Last lines of its log:"
  else
    note "process $1 on ${hosts[$1]} failed (exit $2); last lines of its log:"
  fi
  tail -n 20 "$log_dir/host$1-${hosts[$1]#*@}.log" >&2 || true
  stop_others
}
status=0
# After stop_others' deadline, an ssh client still waiting is given up on (SIGTERM).
supervise 0.5 TERM "${pids[@]}" || status=$?
if ((status == 0)); then
  note "all $n processes finished; logs in $log_dir"
fi
exit "$status"
