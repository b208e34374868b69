#!/usr/bin/env bash
# Helpers shared by the launch scripts. Each sources it from its own directory,
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# so this file must travel with them: host.sh runs on TPU workers from the copy that `tpu.sh setup`
# ships with git archive (the whole launch/ folder). slurm.sbatch keeps its own copies of die and
# quote because sbatch runs it from a spool directory, away from this file.
set -euo pipefail

# Run on its own it only explains itself (and so passes the checks every launch/*.sh gets).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  cat <<'EOF'
Usage: source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"    (from a script in launch/)

The helpers the launch scripts share; running this file does nothing else. The sourcing script
sets PROG, its name in messages, first. Sets LAUNCH_DIR (this folder), REPO_DIR (its parent) and
DRY_RUN=0, and defines:
  die MSG...      print "PROG: error: MSG" on stderr and exit 2
  note MSG...     print "PROG: MSG" on stderr
  quote ARG...    the arguments as one line a shell reads back as the same words
  need OPT ARG... die unless option OPT (the first of the script's remaining arguments) has a value
  run CMD...      under --dry-run (DRY_RUN=1) print CMD; else echo it on stderr and run it
  supervise POLL_S SIGNAL PID...
                  wait for background jobs; hand the first failure (or a job still running
                  FINISH_GRACE_S after another succeeded: RC "linger", status 124) to the
                  script's on_failure, send SIGNAL to the rest once STOP_DEADLINE passes;
                  return the first failure's status
EOF
  exit 0
fi

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # Used by the scripts that source this file.
REPO_DIR="$(dirname "$LAUNCH_DIR")"

die() { echo "$PROG: error: $*" >&2; exit 2; }
note() { echo "$PROG: $*" >&2; }

# Quotes arguments so that a printed command can be pasted back into a shell.
quote() {
  local out=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("$a")
    else
      out+=("'${a//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

# For option parsing: `--opt) need "$@"; value=$2; shift ;;`.
need() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }

DRY_RUN=0
# Prints the command under --dry-run, else echoes it to stderr and runs it.
run() {
  if ((DRY_RUN)); then
    quote "$@"
  else
    echo "+ $(quote "$@")" >&2
    "$@"
  fi
}

# When set (in SECONDS' terms, usually by the script's on_failure), the time after which
# `supervise` forces the jobs still running to end.
STOP_DEADLINE=""
# Seconds the other jobs get to end after the first one ended successfully. kd_jax processes leave
# together (every one waits at JAX's shutdown barrier, bounded by KD_JAX_SHUTDOWN_TIMEOUT_S, 120 s by
# default), so a job still running this long after a peer finished is stuck: it is named and stopped.
FINISH_GRACE_S=${FINISH_GRACE_S:-180}
# supervise POLL_S SIGNAL PID...: waits until the background jobs PID... have all ended and returns
# the exit status of the first that failed (0 if none did; the later failures are usually the
# launcher's own stops). That first failure is handed to the script's `on_failure INDEX RC`
# (INDEX counts from 0 in the PID order), which reports it and stops the others; once
# STOP_DEADLINE passes, those still running get SIGNAL. Jobs still running FINISH_GRACE_S seconds
# after one ended with status 0 are handed to `on_failure INDEX linger` the same way. Polls every
# POLL_S seconds rather than `wait -n`, which would not tell which job ended.
supervise() {
  local poll_s=$1 signal=$2
  shift 2
  local job_pids=("$@") n=$# first_rc=0 i rc linger_deadline=""
  local -A finished=()
  while ((${#finished[@]} < n)); do
    for ((i = 0; i < n; i++)); do
      [[ -n ${finished[$i]:-} ]] && continue
      kill -0 "${job_pids[$i]}" 2>/dev/null && continue
      rc=0
      wait "${job_pids[$i]}" || rc=$?
      finished[$i]=$rc
      if ((rc != 0 && first_rc == 0)); then
        first_rc=$rc
        on_failure "$i" "$rc"
      elif ((rc == 0)) && [[ -z $linger_deadline ]]; then
        linger_deadline=$((SECONDS + FINISH_GRACE_S))
      fi
    done
    if [[ -n $linger_deadline ]] && ((SECONDS >= linger_deadline && first_rc == 0)); then
      for ((i = 0; i < n; i++)); do
        [[ -n ${finished[$i]:-} ]] && continue
        first_rc=124
        on_failure "$i" linger
        break
      done
    fi
    if [[ -n $STOP_DEADLINE ]] && ((SECONDS >= STOP_DEADLINE)); then
      for ((i = 0; i < n; i++)); do
        [[ -n ${finished[$i]:-} ]] || kill "-$signal" "${job_pids[$i]}" 2>/dev/null || true
      done
      STOP_DEADLINE=""
    fi
    ((${#finished[@]} < n)) && sleep "$poll_s"
  done
  return "$first_rc"
}
