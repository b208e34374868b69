#!/usr/bin/env bash
# Cloud TPU pod lifecycle for kd_jax, driven by gcloud:
#   create -> setup -> run -> status / logs -> stop -> delete
# Settings come from launch/tpu.env (copy launch/tpu.env.example). See launch/README.md.
set -euo pipefail

PROG="launch/tpu.sh"
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "$PROG: error: needs bash >= 4.4 (this is $BASH_VERSION); on macOS: brew install bash" >&2
  exit 2
fi
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Local copies of per-worker logs; runs/ is git-ignored.
LOCAL_LOG_ROOT="${KD_JAX_LOCAL_LOGS:-$REPO_DIR/runs/launch_logs}"

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh [--env FILE] [--dry-run] COMMAND [ARGS...]

Runs kd_jax on a Cloud TPU pod slice (every worker runs the same command).

Commands:
  create [--no-wait]       request the slice as a queued resource and wait until ACTIVE
  wait                     wait until the queued resource is ACTIVE (bounded; FAILED and
                           SUSPENDED are errors)
  setup [--ref REF]        copy the code (git archive of REF, default HEAD) to every worker and
                           build a virtual environment there with kd-jax[tpu]
  run [--name RUN] [--workdir DIR] CONFIG [KD_JAX_ARGS...]
                           start `python -m kd_jax.main --config CONFIG ...` detached on every
                           worker with KD_JAX_DISTRIBUTED=1; per-worker logs in ~/kd_jax_logs.
                           The workdir defaults to $WORKDIR_ROOT/RUN; reuse --name (or --workdir)
                           to resume a run from its latest checkpoint.
  status                   queued-resource state and the kd_jax processes on each worker
  logs [RUN] [--follow]    copy every worker's log of RUN (default: the last run started here)
                           to runs/launch_logs/RUN/<worker>.log; --follow tails worker 0 live
  stop [RUN] [--all]       stop the kd_jax processes launch/tpu.sh started on every worker (only
                           RUN's if given; --all: any kd_jax.main there) and free the TPU; the
                           slice stays
  delete [--yes]           delete the queued resource and its TPU VMs (--yes: no prompt)
  ssh COMMAND...           run a shell command on every worker

Options:
  --env FILE   settings file (default: $KD_JAX_TPU_ENV, else launch/tpu.env); variables already
               set in the environment are used when no file exists
  --dry-run    print the commands (gcloud, git) instead of running them
  -h, --help   this help

Example:
  cp launch/tpu.env.example launch/tpu.env && $EDITOR launch/tpu.env
  launch/tpu.sh create && launch/tpu.sh setup
  launch/tpu.sh run configs/smoke.py --config.seed=1
  launch/tpu.sh logs && launch/tpu.sh delete
EOF
}

# --- settings -------------------------------------------------------------------------------------

ENV_FILE="${KD_JAX_TPU_ENV:-}"
COPY_HINT="copy launch/tpu.env.example to launch/tpu.env and fill it in"

load_env() {
  if [[ -n $ENV_FILE ]]; then
    [[ -f $ENV_FILE ]] || die "settings file $ENV_FILE not found; $COPY_HINT"
  elif [[ -f $LAUNCH_DIR/tpu.env ]]; then
    ENV_FILE="$LAUNCH_DIR/tpu.env"
  fi
  if [[ -n $ENV_FILE ]]; then
    # shellcheck disable=SC1090  # The file is the user's, chosen at run time.
    source "$ENV_FILE"
  fi
  QR_ID="${QR_ID:-${TPU_NAME:-}-qr}"
  CAPACITY="${CAPACITY:-on-demand}"
  PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
  INSTALLER="${INSTALLER:-uv}"
  REMOTE_DIR="${REMOTE_DIR:-kd_jax}"
  VENV_DIR="${VENV_DIR:-kd_jax_venv}"
  REMOTE_LOG_DIR="${REMOTE_LOG_DIR:-kd_jax_logs}"
  WAIT_TIMEOUT_S="${WAIT_TIMEOUT_S:-7200}"
  POLL_S="${POLL_S:-30}"
  RUN_ENV="${RUN_ENV:-}"
  local d
  # Remote paths are relative to the worker's home and are removed and recreated by `setup`,
  # so they must be plain names.
  for d in REMOTE_DIR VENV_DIR REMOTE_LOG_DIR; do
    [[ ${!d} =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*$ ]] \
      || die "$d='${!d}' must be a plain directory name (relative to the worker's home)"
  done
}

require() {
  local v
  for v in "$@"; do
    [[ -n ${!v:-} ]] || die "$v is not set; $COPY_HINT"
  done
}

check_capacity() {
  case "$CAPACITY" in
    on-demand) CAPACITY_FLAGS=() ;;
    spot) CAPACITY_FLAGS=(--spot) ;;
    reserved) CAPACITY_FLAGS=(--reserved) ;;
    *) die "CAPACITY='$CAPACITY' must be one of: on-demand, spot, reserved" ;;
  esac
}

gc_flags() { GC=(--zone="$ZONE" --project="$PROJECT"); }

# Runs a shell command on every worker of the slice, concurrently.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GC[@]}" --worker=all --command="$1" "${@:2}"
}

# --- commands -------------------------------------------------------------------------------------

cmd_wait() {
  (($# == 0)) || die "wait: unexpected argument '$1'"
  require PROJECT ZONE TPU_NAME
  gc_flags
  local describe=(gcloud compute tpus queued-resources describe "$QR_ID" "${GC[@]}"
    --format='value(state.state)')
  [[ $WAIT_TIMEOUT_S =~ ^[0-9]+$ && $POLL_S =~ ^[0-9]+$ ]] \
    || die "WAIT_TIMEOUT_S and POLL_S must be whole seconds"
  if ((DRY_RUN)); then
    quote "${describe[@]}"
    echo "# repeated every ${POLL_S} s until ACTIVE, at most ${WAIT_TIMEOUT_S} s;" \
      "FAILED, SUSPENDING or SUSPENDED stop with an error"
    return 0
  fi
  local start=$SECONDS state last=""
  while true; do
    if ! state="$("${describe[@]}")"; then
      echo "$PROG: error: could not read the state of queued resource $QR_ID (see gcloud's" \
        "message above)" >&2
      exit 1
    fi
    if [[ $state != "$last" ]]; then
      note "queued resource $QR_ID: ${state:-<no state>} after $((SECONDS - start)) s"
      last=$state
    fi
    case "$state" in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDING | SUSPENDED)
        echo "$PROG: error: queued resource $QR_ID is $state; see 'gcloud compute tpus" \
          "queued-resources describe $QR_ID --zone=$ZONE --project=$PROJECT', then" \
          "'launch/tpu.sh delete' and 'launch/tpu.sh create' again" >&2
        exit 1
        ;;
    esac
    if ((SECONDS - start >= WAIT_TIMEOUT_S)); then
      echo "$PROG: error: queued resource $QR_ID is still ${state:-<no state>} after" \
        "${WAIT_TIMEOUT_S} s; run 'launch/tpu.sh wait' to keep waiting or 'launch/tpu.sh" \
        "delete' to give up" >&2
      exit 1
    fi
    sleep "$POLL_S"
  done
}

cmd_create() {
  local wait=1
  while (($#)); do
    case "$1" in
      --no-wait) wait=0 ;;
      *) die "create: unknown argument '$1'" ;;
    esac
    shift
  done
  require PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION CAPACITY
  check_capacity
  gc_flags
  run gcloud compute tpus queued-resources create "$QR_ID" "${GC[@]}" --node-id="$TPU_NAME" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" \
    "${CAPACITY_FLAGS[@]}"
  if ((wait)); then
    cmd_wait
  fi
}

cmd_setup() {
  local ref=HEAD
  while (($#)); do
    case "$1" in
      --ref) [[ $# -ge 2 ]] || die "setup: --ref needs a value"; ref=$2; shift ;;
      --ref=*) ref=${1#--ref=} ;;
      *) die "setup: unknown argument '$1'" ;;
    esac
    shift
  done
  require PROJECT ZONE TPU_NAME PYTHON_VERSION
  [[ $PYTHON_VERSION =~ ^3\.[0-9]+(\.[0-9]+)?$ ]] || die "PYTHON_VERSION='$PYTHON_VERSION' must look like 3.12"
  [[ $INSTALLER == uv || $INSTALLER == venv ]] || die "INSTALLER='$INSTALLER' must be uv or venv"
  gc_flags
  command -v git >/dev/null || die "git is needed to package the code"
  local sha
  sha="$(git -C "$REPO_DIR" rev-parse --short "$ref^{commit}" 2>/dev/null)" \
    || die "'$ref' is not a commit of $REPO_DIR"
  # git archive ships exactly one commit: reproducible, and nothing untracked (tpu.env, runs/,
  # .venv) leaves this machine. Say so when there is work it leaves behind.
  if [[ -n "$(git -C "$REPO_DIR" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    note "warning: uncommitted changes are not copied; the workers get commit $sha ($ref)"
  fi
  local tmp tarball
  if ((DRY_RUN)); then
    tmp="${TMPDIR:-/tmp}/kd_jax-launch"
  else
    tmp="$(mktemp -d)"
    # Expanded now on purpose: $tmp is local and gone by the time the trap fires.
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
  fi
  tarball="$tmp/kd_jax-$sha.tar.gz"
  run git -C "$REPO_DIR" archive --format=tar.gz -o "$tarball" "$ref"
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:$REMOTE_DIR.tar.gz" "${GC[@]}" \
    --worker=all
  # Replace the code, keep the venv (re-installing into it is quick), then let host.sh build or
  # update the venv and check that JAX sees the TPU slice.
  local remote
  remote="set -e; rm -rf \"\$HOME/$REMOTE_DIR\"; mkdir -p \"\$HOME/$REMOTE_DIR\";"
  remote+=" tar -xzf \"\$HOME/$REMOTE_DIR.tar.gz\" -C \"\$HOME/$REMOTE_DIR\";"
  remote+=" bash \"\$HOME/$REMOTE_DIR/launch/host.sh\" setup --python $PYTHON_VERSION"
  remote+=" --venv \"\$HOME/$VENV_DIR\" --installer $INSTALLER --extra tpu"
  on_all_workers "$remote"
}

# A run name for a config path: <UTC time>-<config stem>[_<variant>].
default_run_name() {
  local spec=$1 path variant stem
  path=${spec%%:*}
  variant=""
  [[ $spec == *:* ]] && variant="_${spec#*:}"
  stem="$(basename "$path" .py)$variant"
  echo "$(date -u +%Y%m%d-%H%M%S)-${stem//[^A-Za-z0-9._-]/_}"
}

cmd_run() {
  local name="" workdir=""
  while (($#)); do
    case "$1" in
      --name) [[ $# -ge 2 ]] || die "run: --name needs a value"; name=$2; shift ;;
      --name=*) name=${1#--name=} ;;
      --workdir) [[ $# -ge 2 ]] || die "run: --workdir needs a value"; workdir=$2; shift ;;
      --workdir=*) workdir=${1#--workdir=} ;;
      -*) die "run: unknown option '$1' before CONFIG (kd_jax flags go after CONFIG)" ;;
      *) break ;;
    esac
    shift
  done
  [[ $# -ge 1 ]] || die "run: CONFIG is missing, e.g. launch/tpu.sh run configs/smoke.py"
  local config=$1
  shift
  local a
  for a in "$@"; do
    case "$a" in
      --workdir | --workdir=*) die "run: give --workdir before CONFIG: launch/tpu.sh run --workdir DIR CONFIG ..." ;;
      --config | --config=*) die "run: CONFIG is given once, as the first argument after the options" ;;
    esac
  done
  [[ -f $REPO_DIR/${config%%:*} ]] \
    || die "config file ${config%%:*} not found in $REPO_DIR (paths are relative to the repository)"
  require PROJECT ZONE TPU_NAME
  [[ -n $workdir ]] || require WORKDIR_ROOT
  gc_flags
  name=${name:-$(default_run_name "$config")}
  [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "run name '$name' may only use letters, digits, '.', '_', '-'"
  workdir=${workdir:-${WORKDIR_ROOT%/}/$name}

  # The same command line on every worker: JAX finds the pod's topology by itself once
  # KD_JAX_DISTRIBUTED=1 makes kd_jax call jax.distributed.initialize().
  # KD_JAX_LAUNCH_ID marks the process as ours for host.sh kill (stop, and the next run).
  local env_words=(KD_JAX_DISTRIBUTED=1 "KD_JAX_LAUNCH_ID=$name")
  [[ -n ${DATA_DIR:-} ]] && env_words+=("TFDS_DATA_DIR=$DATA_DIR")
  local log="\"\$HOME/$REMOTE_LOG_DIR/$name.log\"" pid="\"\$HOME/$REMOTE_LOG_DIR/$name.pid\""
  local remote
  # 1. kill stale kd_jax processes and free the TPU (host.sh kill); 2. start detached (setsid
  # nohup, stdin closed) so the job survives the ssh session; 3. record its pid for `stop`.
  remote="bash \"\$HOME/$REMOTE_DIR/launch/host.sh\" kill --log-dir \"\$HOME/$REMOTE_LOG_DIR\""
  remote+=" && mkdir -p \"\$HOME/$REMOTE_LOG_DIR\""
  remote+=" && cd \"\$HOME/$REMOTE_DIR\" && { $(quote "${env_words[@]}")${RUN_ENV:+ $RUN_ENV} setsid nohup"
  remote+=" \"\$HOME/$VENV_DIR/bin/python\" -m kd_jax.main $(quote --config "$config" --workdir "$workdir" "$@")"
  # Appended, so a resumed run keeps the earlier attempts' output above its own.
  remote+=" >> $log 2>&1 < /dev/null & echo \$! > $pid; }"
  remote+=" && echo \"\$(hostname): started $name (pid \$(cat $pid)), log ~/$REMOTE_LOG_DIR/$name.log\""
  on_all_workers "$remote"
  if ((!DRY_RUN)); then
    mkdir -p "$LOCAL_LOG_ROOT"
    echo "$name" >"$LOCAL_LOG_ROOT/LAST_TPU_RUN"
    note "started $name on $TPU_NAME; workdir $workdir"
    note "follow it: launch/tpu.sh logs $name --follow; resume it later: launch/tpu.sh run --name $name $config ..."
  fi
}

cmd_status() {
  require PROJECT ZONE TPU_NAME
  gc_flags
  run gcloud compute tpus queued-resources describe "$QR_ID" "${GC[@]}" --format='value(state.state)'
  # [.] keeps pgrep from matching the shell that runs this very command; $(hostname) is meant
  # for the worker's shell.
  # shellcheck disable=SC2016
  on_all_workers 'pgrep -af "kd_jax[.]main" || echo "$(hostname): no kd_jax process"'
}

cmd_logs() {
  local name="" follow=0
  while (($#)); do
    case "$1" in
      --follow | -f) follow=1 ;;
      -*) die "logs: unknown option '$1'" ;;
      *) [[ -z $name ]] || die "logs: one RUN at most"; name=$1 ;;
    esac
    shift
  done
  require PROJECT ZONE TPU_NAME
  gc_flags
  if [[ -z $name ]]; then
    [[ -f $LOCAL_LOG_ROOT/LAST_TPU_RUN ]] \
      || die "logs: which run? pass RUN (the name 'launch/tpu.sh run' printed)"
    name="$(cat "$LOCAL_LOG_ROOT/LAST_TPU_RUN")"
  fi
  [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "run name '$name' may only use letters, digits, '.', '_', '-'"
  local log="\"\$HOME/$REMOTE_LOG_DIR/$name.log\""
  if ((follow)); then
    # Ctrl-C stops the tail, not the job.
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GC[@]}" --worker=0 --command="tail -n 100 -F $log"
    return
  fi
  # gcloud writes each worker's output to <worker>.log in --output-directory.
  local dest="$LOCAL_LOG_ROOT/$name"
  run mkdir -p "$dest"
  on_all_workers "cat $log" --output-directory="$dest"
  if ((!DRY_RUN)); then
    note "logs of $name in $dest/ (one file per worker); last lines of worker 0:"
    tail -n 20 "$dest/0.log" >&2 || true
  fi
}

cmd_stop() {
  local scope=""
  while (($#)); do
    case "$1" in
      --all) scope=" --all" ;;
      -*) die "stop: unknown option '$1'" ;;
      *)
        [[ $1 =~ ^[A-Za-z0-9._-]+$ ]] || die "run name '$1' may only use letters, digits, '.', '_', '-'"
        scope=" --run $1"
        ;;
    esac
    shift
  done
  require PROJECT ZONE TPU_NAME
  gc_flags
  on_all_workers "bash \"\$HOME/$REMOTE_DIR/launch/host.sh\" kill --log-dir \"\$HOME/$REMOTE_LOG_DIR\"$scope"
}

cmd_delete() {
  local quiet=()
  while (($#)); do
    case "$1" in
      --yes | -y) quiet=(--quiet) ;;
      *) die "delete: unknown argument '$1'" ;;
    esac
    shift
  done
  require PROJECT ZONE TPU_NAME
  gc_flags
  # --force deletes the TPU VMs of the queued resource too.
  run gcloud compute tpus queued-resources delete "$QR_ID" "${GC[@]}" --force "${quiet[@]}"
}

cmd_ssh() {
  [[ $# -ge 1 ]] || die "ssh: COMMAND is missing, e.g. launch/tpu.sh ssh 'uptime'"
  require PROJECT ZONE TPU_NAME
  gc_flags
  on_all_workers "$*"
}

# --- main -----------------------------------------------------------------------------------------

main() {
  while (($#)); do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --env) [[ $# -ge 2 ]] || die "--env needs a file"; ENV_FILE=$2; shift ;;
      --env=*) ENV_FILE=${1#--env=} ;;
      -*) die "unknown option '$1' (see launch/tpu.sh --help)" ;;
      *) break ;;
    esac
    shift
  done
  [[ $# -ge 1 ]] || { usage >&2; exit 2; }
  local cmd=$1
  shift
  # --dry-run and --help may also follow the command (launch/tpu.sh run --dry-run ...), except
  # for ssh, whose arguments are the worker's command.
  local rest=() a
  for a in "$@"; do
    case "$cmd:$a" in
      ssh:*) rest+=("$a") ;;
      *:--dry-run) DRY_RUN=1 ;;
      *:-h | *:--help) usage; exit 0 ;;
      *) rest+=("$a") ;;
    esac
  done
  load_env
  case "$cmd" in
    create) cmd_create "${rest[@]}" ;;
    wait) cmd_wait "${rest[@]}" ;;
    setup) cmd_setup "${rest[@]}" ;;
    run) cmd_run "${rest[@]}" ;;
    status) cmd_status "${rest[@]}" ;;
    logs) cmd_logs "${rest[@]}" ;;
    stop) cmd_stop "${rest[@]}" ;;
    delete) cmd_delete "${rest[@]}" ;;
    ssh) cmd_ssh "${rest[@]}" ;;
    *) die "unknown command '$cmd' (see launch/tpu.sh --help)" ;;
  esac
}

main "$@"
