#!/usr/bin/env bash
# Runs ON a TPU worker or a cluster host, from the copy of the repository there (launch/tpu.sh
# calls it on every worker through gcloud ssh):
#   setup  a virtual environment with kd-jax[EXTRA] (editable, from this copy), then a JAX check
#   kill   stop the kd_jax processes the launch scripts started here, and free the TPU
set -euo pipefail

PROG="launch/host.sh"
# lib.sh comes with this copy: `tpu.sh setup` ships the whole repository to each worker.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/host.sh [--dry-run] setup [--python 3.12] [--venv DIR] [--installer uv|venv]
                                        [--extra tpu|cuda|train|NONE] [--no-check]
       launch/host.sh [--dry-run] kill [--run NAME | --all] [--log-dir DIR] [--grace SECONDS]

Runs on the machine that trains (a TPU VM worker, a GPU host), inside the repository copy.

setup   Creates or updates a virtual environment (default ~/kd_jax_venv) with this copy of kd_jax
        installed editable with the given extra (default tpu; train for a CPU host; NONE for
        the losses only: jax and numpy).
        --installer uv (default) installs uv if missing (astral.sh installer) and lets it fetch the
        requested Python when the image lacks it (TPU VM images ship an older Python than kd_jax
        needs); --installer venv uses python<VERSION> -m venv, which must already exist.
        Then checks JAX: with the tpu extra it calls jax.distributed.initialize(), so run it on
        every worker at once (launch/tpu.sh setup does); --no-check skips this.
kill    Sends SIGTERM to the `python -m kd_jax.main` processes launch/tpu.sh started here (their
        pids are in --log-dir, default ~/kd_jax_logs, as <run>.pid, and they carry
        KD_JAX_LAUNCH_ID=<run>), SIGKILL after --grace seconds (default 20), then removes the
        libtpu lock file if no process holds the TPU any more. --run NAME: only that run;
        --all: every kd_jax.main process of this user, however started. Other programs are left
        alone (and reported if they hold the TPU).

Options: --dry-run prints the commands instead of running them; -h, --help this help.
EOF
}

# The workers' messages arrive interleaved (tpu.sh runs this on all of them at once), so each
# names its host.
note() { echo "$PROG: $(hostname): $*" >&2; }

# --- setup ----------------------------------------------------------------------------------------

find_uv() {
  local c
  for c in "$(command -v uv || true)" "$HOME/.local/bin/uv" "$HOME/.cargo/bin/uv"; do
    if [[ -n $c && -x $c ]]; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

cmd_setup() {
  local python=3.12 venv="$HOME/kd_jax_venv" installer=uv extra=tpu check=1
  while (($#)); do
    case "$1" in
      --python) [[ $# -ge 2 ]] || die "--python needs a version"; python=$2; shift ;;
      --venv) [[ $# -ge 2 ]] || die "--venv needs a directory"; venv=$2; shift ;;
      --installer) [[ $# -ge 2 ]] || die "--installer needs uv or venv"; installer=$2; shift ;;
      --extra) [[ $# -ge 2 ]] || die "--extra needs a name"; extra=$2; shift ;;
      --no-check) check=0 ;;
      *) die "setup: unknown argument '$1'" ;;
    esac
    shift
  done
  [[ $python =~ ^3\.[0-9]+(\.[0-9]+)?$ ]] || die "--python '$python' must look like 3.12"
  [[ $extra =~ ^[a-z0-9_-]+$ || $extra == NONE ]] || die "--extra '$extra' is not an extra name"
  [[ -f $REPO_DIR/pyproject.toml ]] || die "$REPO_DIR has no pyproject.toml; run from the repository copy"
  local spec="$REPO_DIR"
  [[ $extra == NONE ]] || spec="${REPO_DIR}[${extra}]"
  local py="$venv/bin/python"

  case "$installer" in
    uv)
      local uv
      if ! uv="$(find_uv)"; then
        run bash -c 'curl -LsSf https://astral.sh/uv/install.sh | sh'
        if ((DRY_RUN)); then
          uv="$HOME/.local/bin/uv"
        else
          uv="$(find_uv)" || die "uv was installed but not found in PATH, ~/.local/bin or ~/.cargo/bin"
        fi
      fi
      # Keep a venv of the right Python (re-installs are then quick); replace any other.
      if [[ -x $py ]] && "$py" -c "import sys; sys.exit(not sys.version.startswith('$python'))" 2>/dev/null; then
        note "reusing $venv"
      else
        run "$uv" venv --clear --seed --python "$python" "$venv"
      fi
      run "$uv" pip install --python "$py" -e "$spec"
      ;;
    venv)
      command -v "python$python" >/dev/null || ((DRY_RUN)) \
        || die "python$python is not installed here; use --installer uv, which fetches it"
      [[ -x $py ]] || run "python$python" -m venv "$venv"
      run "$py" -m pip install --upgrade pip
      run "$py" -m pip install -e "$spec"
      ;;
    *) die "--installer '$installer' must be uv or venv" ;;
  esac

  ((check)) || return 0
  if [[ $extra == tpu ]]; then
    # On a pod slice every worker must join: launch/tpu.sh runs this with --worker=all.
    run "$py" -c 'import socket, jax; jax.distributed.initialize(); print(f"{socket.gethostname()}: jax {jax.__version__}, process {jax.process_index()} of {jax.process_count()}, {jax.local_device_count()} local / {jax.device_count()} global {jax.default_backend()} devices")'
  else
    run "$py" -c 'import socket, jax; print(f"{socket.gethostname()}: jax {jax.__version__}, {jax.local_device_count()} {jax.default_backend()} devices")'
  fi
}

# --- kill -----------------------------------------------------------------------------------------

# This process and its ancestors: the launching shell's command line may mention kd_jax.main.
ancestors() {
  local p=$$
  while [[ -n $p && $p != 0 && $p != 1 ]]; do
    echo "$p"
    p="$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null || true)"
  done
}

# Whether PID is a `<python> -m kd_jax.main` process, judged by its argv, not a loose match.
is_kd_jax_main() {
  local argv re='^[^ ]*python[0-9.]* (.* )?-m kd_jax[.]main( |$)'
  argv="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true)"
  [[ $argv =~ $re ]]
}

# PIDs to stop. $1 is "all" (every kd_jax.main process of this user), "launched" (those recorded in
# the pid files of LOG_DIR, $2) or "run:NAME" (that run's pid file only). A recorded pid counts only
# if the process still is kd_jax.main with KD_JAX_LAUNCH_ID=<its run>, so a reused pid is spared.
kd_jax_pids() {
  local scope=$1 log_dir=$2 pid skip f run launch_id
  if [[ $scope == all ]]; then
    skip=" $(ancestors | tr '\n' ' ') "
    for pid in $(pgrep -u "$(id -u)" -f 'kd_jax[.]main' || true); do
      [[ $skip == *" $pid "* ]] && continue
      is_kd_jax_main "$pid" && echo "$pid"
    done
    return 0
  fi
  local files=()
  if [[ $scope == run:* ]]; then
    files=("$log_dir/${scope#run:}.pid")
  else
    shopt -s nullglob
    files=("$log_dir"/*.pid)
    shopt -u nullglob
  fi
  for f in "${files[@]}"; do
    [[ -f $f ]] || continue
    run="$(basename "$f" .pid)"
    pid="$(cat "$f" 2>/dev/null || true)"
    [[ $pid =~ ^[0-9]+$ ]] || continue
    is_kd_jax_main "$pid" || continue
    launch_id="$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^KD_JAX_LAUNCH_ID=//p')"
    [[ $launch_id == "$run" ]] && echo "$pid"
  done
  return 0
}

# Running, not merely a zombie waiting for a parent that may never reap it (PID 1 in containers).
is_alive() {
  [[ -e /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

cmd_kill() {
  local grace=20 scope=launched log_dir="$HOME/kd_jax_logs"
  while (($#)); do
    case "$1" in
      --log-dir) [[ $# -ge 2 && -n $2 ]] || die "--log-dir needs a directory"; log_dir=$2; shift ;;
      --grace) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "--grace needs whole seconds"; grace=$2; shift ;;
      --all) scope=all ;;
      --run) [[ $# -ge 2 && -n $2 ]] || die "--run needs a run name"; scope="run:$2"; shift ;;
      *) die "kill: unknown argument '$1'" ;;
    esac
    shift
  done
  local pids
  mapfile -t pids < <(kd_jax_pids "$scope" "$log_dir")
  if ((${#pids[@]})); then
    note "stopping kd_jax processes ${pids[*]}"
    run kill -TERM "${pids[@]}" || true
    if ((!DRY_RUN)); then
      local t=0 alive
      while ((t < grace * 5)); do
        alive=()
        local p
        for p in "${pids[@]}"; do is_alive "$p" && alive+=("$p"); done
        ((${#alive[@]})) || break
        sleep 0.2
        t=$((t + 1))
      done
      if ((${#alive[@]})); then
        note "still running after ${grace} s, sending SIGKILL to ${alive[*]}"
        kill -KILL "${alive[@]}" 2>/dev/null || true
        sleep 1
      fi
    fi
  else
    note "no kd_jax process to stop"
  fi

  # A process that dies hard can leave libtpu's lock file behind and block the next run (maxtext's
  # kill script removes it for the same reason). Remove it only once nothing holds the TPU.
  local lock="${TMPDIR:-/tmp}/libtpu_lockfile" holders=""
  local devs
  shopt -s nullglob
  devs=(/dev/accel* /dev/vfio/[0-9]*)
  shopt -u nullglob
  if command -v lsof >/dev/null && ((${#devs[@]})); then
    holders="$(lsof -t "${devs[@]}" 2>/dev/null | sort -u | tr '\n' ' ' || true)"
  fi
  if [[ -n ${holders// /} ]]; then
    note "warning: processes ${holders% } still hold the TPU; not touching $lock. If they are" \
      "stale kd_jax runs started by hand, use: launch/host.sh kill --all"
  elif [[ -e $lock ]] || ((DRY_RUN)); then
    run rm -f "$lock"
  fi
}

main() {
  while (($#)); do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      -*) die "unknown option '$1' (see launch/host.sh --help)" ;;
      *) break ;;
    esac
    shift
  done
  [[ $# -ge 1 ]] || { usage >&2; exit 2; }
  local cmd=$1 rest=() a
  shift
  for a in "$@"; do
    case "$a" in
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      *) rest+=("$a") ;;
    esac
  done
  case "$cmd" in
    setup) cmd_setup "${rest[@]}" ;;
    kill) cmd_kill "${rest[@]}" ;;
    *) die "unknown command '$cmd' (see launch/host.sh --help)" ;;
  esac
}

main "$@"
