#!/usr/bin/env bash
# Run cnnjax on a Cloud TPU VM (one host, or a pod slice of several) with `gcloud compute tpus tpu-vm`.
#
#   launch/tpu.sh create  --name=N --zone=Z --type=v4-8 [--version=V] [--project=P] [--spot]
#   launch/tpu.sh setup   --name=N --zone=Z        # copy this checkout (git HEAD) to every worker, install it (with [gcs])
#   launch/tpu.sh run     --name=N --zone=Z -- --config=configs/resnet.py:50 --workdir=gs://BUCKET/resnet50
#   launch/tpu.sh run     --name=N --zone=Z --module=cnnjax.sweep --chips-per-run=1 [--workers=W] -- --sweep=F --workdir=gs://B/S
#   launch/tpu.sh logs    --name=N --zone=Z [--worker=0]
#   launch/tpu.sh delete  --name=N --zone=Z
#
# `run` starts `python -m cnnjax.main ARGS --coordinator_address=auto` on all workers at once, in the
# background (log: ~/cnnjax.log on each); the workers find each other through JAX, and write their checkpoints
# collectively to the workdir, which a pod slice needs on shared storage (gs://). `run` with
# `--module=cnnjax.sweep` runs a sweep instead, each run over the whole slice; with --chips-per-run=K a sweep of
# small runs, each on K chips of one worker (cnnjax.sweep's accelerator slots), the W workers (--workers, default
# 1) each taking every W-th run (--shard); gather them with --summary_only. Sweeps over several TPU VMs: a Ray
# cluster (docs/scaling.md). --dry-run prints the gcloud commands and runs nothing. --project defaults to
# gcloud's configured project; --version to the runtime image for --type.
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

command=${1:-}
[[ -n $command ]] || usage
shift
name="" zone="" type="" version="" project="" worker=0 spot=0 dry_run=0 module=cnnjax.main chips_per_run="" workers=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --type=*) type=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --worker=*) worker=${1#*=} ;;
    --module=*) module=${1#*=} ;;
    --chips-per-run=*) chips_per_run=${1#*=} ;;
    --workers=*) workers=${1#*=} ;;
    --spot) spot=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1" >&2; usage ;;
  esac
  shift
done
[[ -n $name && -n $zone ]] || { echo "error: --name and --zone are required" >&2; exit 2; }

# Run (or, with --dry-run, print) one command, each argument quoted as the shell needs it.
do_run() {
  if [[ $dry_run == 1 ]]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

tpu=(gcloud compute tpus tpu-vm)
where=("$name" "--zone=$zone")
[[ -z $project ]] || where+=("--project=$project")

default_version() {  # the TPU VM base image for an accelerator type
  case $1 in
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

case $command in
  create)
    [[ -n $type ]] || { echo "error: create needs --type (e.g. v4-8, v5litepod-8, v4-32)" >&2; exit 2; }
    args=("${where[@]}" "--accelerator-type=$type" "--version=${version:-$(default_version "$type")}")
    [[ $spot == 0 ]] || args+=(--spot)
    do_run "${tpu[@]}" create "${args[@]}"
    ;;
  setup)
    archive=$(mktemp -d)/cnnjax.tar.gz
    do_run git archive --format=tar.gz --output="$archive" HEAD
    do_run "${tpu[@]}" scp "$archive" "${name}:cnnjax.tar.gz" "${where[@]:1}" --worker=all
    do_run "${tpu[@]}" ssh "${where[@]}" --worker=all --command="rm -rf ~/cnnjax && mkdir ~/cnnjax && tar -xzf ~/cnnjax.tar.gz -C ~/cnnjax && python3 -m venv ~/venv && ~/venv/bin/pip install -q -e ~/cnnjax'[gcs]' 'jax[tpu]'"
    ;;
  run)
    [[ $# -gt 0 ]] || { echo "error: run needs the command's flags after --, e.g. -- --config=configs/resnet.py:50 --workdir=gs://BUCKET/run" >&2; exit 2; }
    quoted=$(printf '%q ' "$@")
    if [[ -z $chips_per_run ]]; then  # one run (or one run at a time) over every chip of every worker
      do_run "${tpu[@]}" ssh "${where[@]}" --worker=all --command="cd ~/cnnjax && nohup ~/venv/bin/python -m $module ${quoted}--coordinator_address=auto > ~/cnnjax.log 2>&1 &"
    else  # a sweep of small runs: K chips each, every worker its share
      [[ $module == cnnjax.sweep ]] || { echo "error: --chips-per-run is for --module=cnnjax.sweep" >&2; exit 2; }
      for ((i = 0; i < workers; i++)); do
        do_run "${tpu[@]}" ssh "${where[@]}" "--worker=$i" --command="cd ~/cnnjax && nohup ~/venv/bin/python -m cnnjax.sweep ${quoted}--devices_per_run=$chips_per_run --shard=$i/$workers > ~/cnnjax.log 2>&1 &"
      done
    fi
    ;;
  logs)
    do_run "${tpu[@]}" ssh "${where[@]}" "--worker=$worker" --command="tail -n 100 -f ~/cnnjax.log"
    ;;
  delete)
    do_run "${tpu[@]}" delete "${where[@]}" --quiet
    ;;
  *)
    echo "error: unknown command $command; valid: create, setup, run, logs, delete" >&2
    exit 2
    ;;
esac
