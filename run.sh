#!/usr/bin/env bash
# Sweep helper with the original argument order:
#   ./run.sh model modeltype nsamp niters activation order target [gpu]
# model: mnist|cifar; modeltype: normal|distilled|brelu|2-layer|N,M,tag; order: 1|2;
# target: top2|rand|least|all. Scores NUMIMG (default 20) test images with batch size = nsamp and
# logs the original's full output (--verbose) to logs/<model>/<modeltype>/<target>_<nsamp>_<niters>_<activation>_order<order>_<timestamp>.log.
# Extra collect_gradients.py flags can be passed in CLEVER_ARGS, the log root in CLEVER_LOG_DIR
# (default logs) and the interpreter in PYTHON (default python3). CLEVER_RAY=ADDRESS runs the collection
# on Ray (collect_gradients.py --ray ADDRESS: local, auto or host:port).
set -euo pipefail

usage() {
  echo "usage: $0 model modeltype nsamp niters activation order target [gpu]" >&2
  echo "  model: mnist|cifar  order: 1|2  target: top2|rand|least|all  (NUMIMG=$NUMIMG images)" >&2
  exit 2
}

NUMIMG=${NUMIMG:-20}
[ $# -ge 7 ] && [ $# -le 8 ] || usage
model=$1 modeltype=$2 nsamp=$3 niters=$4 activation=$5 order=$6 target=$7 gpu=${8:-}
case $model in mnist|cifar) ;; *) echo "error: model must be mnist or cifar, got '$model'" >&2; usage ;; esac
case $order in 1|2) ;; *) echo "error: order must be 1 or 2, got '$order'" >&2; usage ;; esac
case $target in
  top2) mask=1 ;; rand) mask=2 ;; least) mask=4 ;; all) mask=15 ;;
  *) echo "error: target must be top2, rand, least or all, got '$target'" >&2; usage ;;
esac
[[ $nsamp =~ ^[1-9][0-9]*$ && $niters =~ ^[1-9][0-9]*$ ]] || { echo "error: nsamp and niters must be positive integers" >&2; usage; }
[ -n "$gpu" ] && export CUDA_VISIBLE_DEVICES=$gpu

cd "$(dirname "$0")"
logdir="${CLEVER_LOG_DIR:-logs}/$model/$modeltype"
mkdir -p "$logdir"
log="$logdir/${target}_${nsamp}_${niters}_${activation}_order${order}_$(date +%Y%m%d_%H%M%S).log"
echo "logging to $log" >&2
# shellcheck disable=SC2086
"${PYTHON:-python3}" collect_gradients.py --dataset "$model" --model_name "$modeltype" --activation "$activation" \
  -N "$nsamp" -i "$niters" -b "$nsamp" --order "$order" --target_type "$mask" -n "$NUMIMG" --quiet --verbose \
  ${CLEVER_RAY:+--ray "$CLEVER_RAY"} ${CLEVER_ARGS:-} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
