#!/usr/bin/env bash
# Reproduce the paper's Table 2 (CW and I-FGSM distortions next to CLEVER scores) for the shipped
# MNIST and CIFAR models:
#   ./reproduce.sh [-k K] [-N nsamp] [-i niters] [-o folder] [-r ray_address] [-c|-C] [dataset:model ...]
# K test images per network (the paper used 500), with least-likely, random and top-2 targets.
# Networks default to every one of mnist:2-layer mnist:normal mnist:distilled mnist:brelu and the
# same for cifar whose weights are in models/ (missing ones are skipped with a note).
# Writes <folder>/table2.md, table2.csv, table2.png and the per-network CSVs and logs it joins.
# A rerun into the same folder reuses finished .mat files and attack CSVs (same K), so networks
# can be added one at a time; delete the folder to start over.
# The interpreter is $PYTHON (default python3); CLEVER_DATA_DIR names the data folder; extra
# attacks.py flags (e.g. --cw_iterations 200 for a quick look) go in ATTACK_ARGS.
# -r ADDRESS collects the gradients on Ray (collect_gradients.py --ray ADDRESS: local, auto or host:port).
# -c also certifies the MNIST networks (collect_gradients.py --certify: Certified L2/Linf columns in
# the table, radii in the plot); -C certifies the CIFAR ones too. Off by default, for the cost: about
# 15 s per target and norm on the MNIST CNN and 150 s on the CIFAR CNN (2 CPU cores), so -k 20 with
# 3 targets and 3 norms adds some 45 minutes per MNIST CNN and 7.5 hours per CIFAR CNN. Certified
# runs keep their .mat files in lipschitz_mat_certified/, apart from the uncertified ones: a rerun
# reuses finished files, and an uncertified one would be reused without radii.
set -euo pipefail

usage() {
  echo "usage: $0 [-k images] [-N nsamp] [-i niters] [-o folder] [-r ray_address] [-c|-C] [dataset:model ...]" >&2
  echo "  dataset: mnist|cifar  model: 2-layer|normal|distilled|brelu" >&2
  echo "  -c: certify the MNIST networks (--certify); -C: the CIFAR ones too (hours)" >&2
  exit 2
}

K=20 NSAMP=256 NITERS=100 OUT=reproduction
ray_args=()
CERTIFY=""  # the datasets to certify: "", "mnist" (-c) or "mnist cifar" (-C)
while getopts "k:N:i:o:r:cCh" opt; do
  case $opt in
    k) K=$OPTARG ;; N) NSAMP=$OPTARG ;; i) NITERS=$OPTARG ;; o) OUT=$OPTARG ;; r) ray_args=(--ray "$OPTARG") ;;
    c) CERTIFY=mnist ;; C) CERTIFY="mnist cifar" ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
for n in "$K" "$NSAMP" "$NITERS"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "error: -k, -N and -i take positive integers, got '$n'" >&2; usage; }
done

cd "$(dirname "$0")"
PY=${PYTHON:-python3}
declare -A LABEL=([2-layer]=MLP [normal]=CNN [distilled]=DD [brelu]=BReLU)
if [ $# -eq 0 ]; then
  set -- mnist:2-layer mnist:normal mnist:distilled mnist:brelu cifar:2-layer cifar:normal cifar:distilled cifar:brelu
  explicit=0
else
  explicit=1
fi

mkdir -p "$OUT"
start=$(date +%s)
table_args=()
for net in "$@"; do
  dataset=${net%%:*} model=${net#*:}
  case $dataset in mnist|cifar) ;; *) echo "error: unknown dataset in '$net'" >&2; usage ;; esac
  [ -n "${LABEL[$model]+x}" ] || { echo "error: unknown model in '$net'" >&2; usage; }
  weights=$("$PY" -c "import sys; from cleverscore.models.zoo import models_folder, parse_model_name as p
print(models_folder() / p(sys.argv[1], sys.argv[2]).weights_file)" "$dataset" "$model")
  if [ ! -f "$weights" ]; then
    [ $explicit -eq 1 ] && { echo "error: $weights is missing (see models/README.md to train it)" >&2; exit 1; }
    echo "[REPRO] skipping $net: $weights is not there" >&2
    continue
  fi
  tag="${dataset}_${model}"
  name="$(echo "$dataset" | tr a-z A-Z)-${LABEL[$model]}"
  mats="$OUT/lipschitz_mat" certify_args=()
  if [[ " $CERTIFY " == *" $dataset "* ]]; then
    mats="$OUT/lipschitz_mat_certified" certify_args=(--certify)
  fi
  echo "[REPRO] $name: CLEVER (-N $NSAMP -i $NITERS${certify_args[*]+, certified}) and attacks on $K images" >&2
  "$PY" collect_gradients.py -d "$dataset" -m "$model" -n "$K" --target_type 7 -N "$NSAMP" -i "$NITERS" \
    -s "$mats" --quiet ${ray_args[@]+"${ray_args[@]}"} ${certify_args[@]+"${certify_args[@]}"} \
    > "$OUT/collect_$tag.log" 2>&1
  "$PY" clever.py "$mats/$tag" --csv "$OUT/clever_$tag.csv" > "$OUT/clever_$tag.log" 2>&1
  if [ ! -f "$OUT/attacks_$tag.csv" ]; then  # a rerun reuses finished attacks (and .mat files)
    # shellcheck disable=SC2086
    "$PY" attacks.py -d "$dataset" -m "$model" -n "$K" --target_type 7 --csv "$OUT/attacks_$tag.csv" \
      ${ATTACK_ARGS:-} > "$OUT/attacks_$tag.log" 2>&1
  fi
  table_args+=(--network "$name" "$OUT/attacks_$tag.csv" "$OUT/clever_$tag.csv")
done
[ ${#table_args[@]} -gt 0 ] || { echo "error: no network to reproduce" >&2; exit 1; }
"$PY" -m cleverscore.cli.tables "${table_args[@]}" --markdown "$OUT/table2.md" --csv "$OUT/table2.csv" --plot "$OUT/table2.png"
echo "[REPRO] done in $(( $(date +%s) - start )) s; tables in $OUT/table2.md" >&2
