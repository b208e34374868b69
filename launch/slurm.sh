#!/usr/bin/env bash
# Submits kd_jax to a SLURM GPU cluster: composes the sbatch command for launch/slurm.sbatch.
set -euo pipefail

PROG="launch/slurm.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/slurm.sh [OPTIONS] CONFIG [KD_JAX_ARGS...]

Submits `python -m kd_jax.main --config CONFIG KD_JAX_ARGS...` as a SLURM batch job
(launch/slurm.sbatch), one process per node or per GPU, with KD_JAX_DISTRIBUTED=1;
jax.distributed discovers the cluster from SLURM.

Options:
  --nodes N            nodes (default 1)
  --gpus-per-node G    GPUs per node (default 8)
  --tasks-per node|gpu one process per node with all its GPUs (default), or one per GPU
  --partition P        SLURM partition
  --account A          SLURM account
  --time T             time limit, e.g. 24:00:00
  --job-name NAME      job name (default kd_jax-<config stem>)
  --python PY          Python on the nodes (default: REPO/.venv/bin/python, else python3)
  --log-dir DIR        per-task logs (default: REPO/runs/launch_logs/slurm-<job id>)
  --sbatch-arg ARG     one more sbatch option, e.g. --sbatch-arg=--cpus-per-task=16 (repeatable)
  --dry-run            print the sbatch command instead of running it
  -h, --help           this help

Pass --workdir after CONFIG; rerunning with the same --workdir resumes from its latest checkpoint.

Example:
  launch/slurm.sh --nodes 2 --gpus-per-node 8 --partition gpu configs/smoke.py --workdir runs/smoke2
EOF
}

nodes=1 gpus=8 tasks_per=node partition="" account="" time_limit="" job_name="" python="" log_dir=""
extra=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --nodes) need "$@"; nodes=$2; shift ;;
    --nodes=*) nodes=${1#*=} ;;
    --gpus-per-node) need "$@"; gpus=$2; shift ;;
    --gpus-per-node=*) gpus=${1#*=} ;;
    --tasks-per) need "$@"; tasks_per=$2; shift ;;
    --tasks-per=*) tasks_per=${1#*=} ;;
    --partition) need "$@"; partition=$2; shift ;;
    --partition=*) partition=${1#*=} ;;
    --account) need "$@"; account=$2; shift ;;
    --account=*) account=${1#*=} ;;
    --time) need "$@"; time_limit=$2; shift ;;
    --time=*) time_limit=${1#*=} ;;
    --job-name) need "$@"; job_name=$2; shift ;;
    --job-name=*) job_name=${1#*=} ;;
    --python) need "$@"; python=$2; shift ;;
    --python=*) python=${1#*=} ;;
    --log-dir) need "$@"; log_dir=$2; shift ;;
    --log-dir=*) log_dir=${1#*=} ;;
    --sbatch-arg) need "$@"; extra+=("$2"); shift ;;
    --sbatch-arg=*) extra+=("${1#*=}") ;;
    -*) die "unknown option '$1' before CONFIG (see launch/slurm.sh --help)" ;;
    *) break ;;
  esac
  shift
done
[[ $# -ge 1 ]] || die "CONFIG is missing, e.g. launch/slurm.sh --nodes 2 configs/smoke.py"
[[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$nodes'"
[[ $gpus =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer, got '$gpus'"
case "$tasks_per" in
  node) ntasks_per_node=1 ;;
  gpu) ntasks_per_node=$gpus ;;
  *) die "--tasks-per must be node or gpu, got '$tasks_per'" ;;
esac
config=$1
# The tasks run in the repository (srun --chdir), so CONFIG and a relative --workdir are read
# from there.
cpath=${config%%:*}
[[ -f $REPO_DIR/$cpath || ($cpath == /* && -f $cpath) ]] \
  || die "config file $cpath not found in $REPO_DIR (give it relative to the repository)"
stem="$(basename "$cpath" .py)"
job_name=${job_name:-kd_jax-$stem}
if ((!DRY_RUN)); then
  command -v sbatch >/dev/null || die "sbatch not found; run this on a SLURM login node"
  mkdir -p "$REPO_DIR/runs/launch_logs"
fi

# The batch script runs from a spool copy, so it learns where the code is from the environment
# (sbatch exports the submitting environment by default).
env_words=("KD_JAX_REPO=$REPO_DIR")
[[ -n $python ]] && env_words+=("KD_JAX_PYTHON=$python")
[[ -n $log_dir ]] && env_words+=("KD_JAX_LOG_DIR=$log_dir")
cmd=(env "${env_words[@]}" sbatch --job-name="$job_name" --nodes="$nodes"
  --ntasks-per-node="$ntasks_per_node" --gpus-per-node="$gpus"
  --output="$REPO_DIR/runs/launch_logs/%x-%j.out")
[[ -n $partition ]] && cmd+=(--partition="$partition")
[[ -n $account ]] && cmd+=(--account="$account")
[[ -n $time_limit ]] && cmd+=(--time="$time_limit")
cmd+=("${extra[@]}" "$LAUNCH_DIR/slurm.sbatch" "$@")

# The job starts in the directory sbatch is called from: the repository.
cd "$REPO_DIR"
run "${cmd[@]}"
