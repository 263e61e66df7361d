#!/usr/bin/env bash
# Full-length runs on a lent GPU machine (the `device` tool), within its limits: 10 min per
# command, the machine's /tmp kept only ~30 s between calls, 64 MiB carried per call.
#
# Here, before each call, stage one part of the data (and once the wheels):
#   ../shared/tools/gpu_wheels.sh            # -> .whl
#   ../shared/tools/device_carry.sh glas 1 3 # -> .devdata (parts 2 3 and 3 3 for later calls)
# On the device, with carry [".whl", ".devdata"], calls back to back:
#   bash benchmarks/device_runs.sh receive                 # parts 1 and 2: park them in /tmp
#   bash benchmarks/device_runs.sh train warwick_unet 540  # part 3, then train 540 s
#   bash benchmarks/device_runs.sh train warwick_unet 540  # resumes, until report.md exists
# `train CONFIG[:ARG] SECONDS [--config.x=y ...]` stops the run with SIGTERM after SECONDS
# (it checkpoints and exits 0), so the next call resumes it; /tmp/hjwork/<config> is the
# workdir. What comes back in $OUT: report.md, metrics.jsonl, curves.png, train.log.
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null && [[ ! -e /tmp/site/.installed ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && touch /tmp/site/.installed || exit 1
fi
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
if [[ -d .devdata ]]; then
  mkdir -p /tmp/hjdata && cp -r .devdata/. /tmp/hjdata/
  export HISTOJAX_DATA=/tmp/hjdata
fi
export HISTOJAX_CACHE=${HISTOJAX_CACHE:-/tmp/hjcache} PYTHONUNBUFFERED=1
out=${OUT:-/tmp/hjout}
mkdir -p "$out"
python=${PYTHON:-python3}

case "${1:-}" in
  receive)
    du -sh "$HISTOJAX_DATA"/* ;;
  train)
    config=${2:?config name, e.g. warwick_unet or nuclei_resnet18:imagenet}
    seconds=${3:-540}
    shift 3 || shift $#
    work=/tmp/hjwork/${config//[:,=]/_}
    mkdir -p "$work"
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null
    timeout -s TERM "$seconds" "$python" launch.py --config="configs/${config%%:*}.py${config#"${config%%:*}"}" \
      --workdir="$work" "$@" 2>&1 | tee -a "$work/train.log"
    rc=${PIPESTATUS[0]}
    for f in report.md metrics.jsonl plots/curves.png train.log; do
      [[ -e "$work/$f" ]] && cp "$work/$f" "$out/"
    done
    if [[ -e "$work/report.md" ]]; then echo "DONE: $work/report.md"; else
      echo "NOT DONE (rc=$rc): call the same command again to resume from $work"; fi ;;
  *)
    echo "usage: $0 receive | train CONFIG[:ARG] SECONDS [--config.x=y ...]" >&2; exit 2 ;;
esac
