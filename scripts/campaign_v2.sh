#!/usr/bin/env bash
# The v2 real-label campaign of docs/results.md on MSD Hippocampus, resumable across machines.
#
#   bash scripts/campaign_v2.sh setup            # convert + plan + preprocess into $ROOT (once)
#   bash scripts/campaign_v2.sh run [--dry-run]  # few-label rows, then full-label rows
#   bash scripts/campaign_v2.sh export           # records of finished folds -> the repository
#   bash scripts/campaign_v2.sh report [N]       # reports of the rows recorded for runs 1..N
#   REPORTS=/tmp/v2 bash scripts/campaign_v2.sh report 1   # a progress report, not for committing
#   bash scripts/campaign_v2.sh rows             # print the trainers of both regimes
#   CANDIDATES="_PDELR10" bash scripts/campaign_v2.sh run   # + a gate candidate's full-label row
#
# ROOT (default /work/nnunet_data) holds nnUNet_raw/_preprocessed/_results; the source data
# is $MSD (default ../shared/data/msd_hippocampus/Task04_Hippocampus, read only). Trainings
# run one at a time (two at once on a 2-core CPU oversubscribe it); folds that already have
# a record in $RECORDS (default docs/results/hippocampus/v2_records) are skipped (benchmark
# run --records), so a reset machine resumes where the committed records end. Run `export`
# (or loop it) while `run` trains, and commit the records it writes.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${ROOT:-/work/nnunet_data}"
MSD="${MSD:-$REPO/../shared/data/msd_hippocampus/Task04_Hippocampus}"
RECORDS="${RECORDS:-$REPO/docs/results/hippocampus/v2_records}"
S=25epochs_20iters_noTTA
FEW=(
  "nnUNetTrainerPDE3D_Backbone_${S}_Frac10" "nnUNetTrainerPDE3D_LossOnly_${S}_Frac10"
  "nnUNetTrainerPDE3D_${S}_Frac10" "nnUNetTrainerPDE3D_PDELR10_${S}_Frac10"
  "nnUNetTrainerPDE3D_GateScale10_${S}_Frac10" "nnUNetTrainerPDE3D_Stages01_${S}_Frac10"
)
# The two gate candidates (_PDELR10, _GateScale10) are measured in the few-label regime, where
# 500 iterations see each of the 16 cases many times; a full-label row of one of them is added
# (CANDIDATES="_PDELR10 ...") only if it beats the full model there beyond the spread (issue 22,
# step 2): 6 trainings (about 6 CPU hours) are not spent on rows that would not be read.
FULL=(
  "nnUNetTrainerPDE3D_Backbone_${S}" "nnUNetTrainerPDE3D_LossOnly_${S}"
  "nnUNetTrainerPDE3D_NoReg_${S}" "nnUNetTrainerPDE3D_${S}" "nnUNetTrainerPDE3D_Stages01_${S}"
)
for c in ${CANDIDATES:-}; do FULL+=("nnUNetTrainerPDE3D${c}_${S}"); done
# The order of training (runs outermost, then this order within a run): from run 2 on the rows
# that decide step 2 come first (the full model, then the two gate candidates), so that an
# interrupted campaign has answered the question the full-label rows wait for. The reports
# keep FEW's order (its first row is the reference).
FEW_TRAIN_ORDER=(
  "nnUNetTrainerPDE3D_${S}_Frac10" "nnUNetTrainerPDE3D_PDELR10_${S}_Frac10"
  "nnUNetTrainerPDE3D_GateScale10_${S}_Frac10" "nnUNetTrainerPDE3D_Backbone_${S}_Frac10"
  "nnUNetTrainerPDE3D_LossOnly_${S}_Frac10" "nnUNetTrainerPDE3D_Stages01_${S}_Frac10"
)

export nnUNet_raw="$ROOT/raw" nnUNet_preprocessed="$ROOT/preprocessed"
export nnUNet_results="$ROOT/results" nnUNet_compile=f
if ! command -v nnunet-pde >/dev/null; then
  # shellcheck disable=SC1091
  source "$REPO/.venv/bin/activate"
fi
eval "$(nnunet-pde env)"   # nnUNet_extTrainer (the three folders above are already set)

case "${1:-}" in
  setup)
    [ -d "$MSD/imagesTr" ] || { echo "no MSD Hippocampus at $MSD (set MSD=...)" >&2; exit 2; }
    if [ -d "$nnUNet_preprocessed/Dataset004_Hippocampus/nnUNetPlans_3d_fullres" ]; then
      echo "already preprocessed: $nnUNet_preprocessed/Dataset004_Hippocampus"; exit 0
    fi
    stage="$ROOT/stage/Task04_Hippocampus"   # the converter wants imagesTs/: links + an empty one
    mkdir -p "$stage/imagesTs" "$ROOT/logs"
    for f in imagesTr labelsTr dataset.json; do ln -sfn "$(realpath "$MSD/$f")" "$stage/$f"; done
    nnUNetv2_convert_MSD_dataset -i "$stage" -np 2
    nnUNetv2_plan_and_preprocess -d 4 -c 3d_fullres --verify_dataset_integrity -npfp 2 -np 2
    echo "set up: $ROOT (raw, preprocessed); next: bash scripts/campaign_v2.sh run"
    ;;
  run)
    shift
    for rows in FEW_TRAIN_ORDER FULL; do
      declare -n list=$rows
      nnunet-pde benchmark run 4 --device cpu --folds 0 --runs 3 --records "$RECORDS" \
        --trainers "${list[@]}" "$@"
    done
    ;;
  export)
    nnunet-pde benchmark export 4 --folds 0 --runs 3 -j 1 --no-progress --output "$RECORDS" \
      --trainers "${FEW[@]}" "${FULL[@]}"
    ;;
  report)
    # three reports from the committed records into $REPORTS/v2_<name> (default
    # docs/results/hippocampus, where the final ones are committed, about 0.7 MB each): few
    # labels and full labels against the backbone, the gate candidates against the full model;
    # a row enters once runs 1..N of it are recorded (N default 3), so progress reports work
    runs="${2:-3}"
    recorded() {   # the trainers among "$@" with a complete record of fold 0 for runs 1..$runs
      python - "$RECORDS" "$runs" "$@" <<'PY'
import sys
from nnunet_pde.benchmark.records import find_record  # what benchmark report reads
root, runs, trainers = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for t in trainers:
    if all(find_record(root, t, "nnUNetPlans", "3d_fullres", r, 0) for r in range(1, runs + 1)):
        print(t)
PY
    }
    report() {   # report NAME REFERENCE TRAINER...
      local name=$1 ref=$2; shift 2
      local rows; mapfile -t rows < <(recorded "$@")
      if [ "${#rows[@]}" -lt 2 ] || [ "${rows[0]}" != "$ref" ]; then
        echo "$name: skipped (runs 1..$runs recorded for: ${rows[*]:-none}; needs $ref and one more)"
        return 0
      fi
      nnunet-pde benchmark report 4 --folds 0 --runs "$runs" --records "$RECORDS" \
        --reference "$ref" --trainers "${rows[@]}" --metrics dice hd95_mm nsd precision recall \
        --output "${REPORTS:-$REPO/docs/results/hippocampus}/v2_$name" --overwrite -j 1 --no-progress
    }
    report few_labels "${FEW[0]}" "${FEW[@]}"
    report gate_candidates "nnUNetTrainerPDE3D_${S}_Frac10" "nnUNetTrainerPDE3D_${S}_Frac10" \
      "nnUNetTrainerPDE3D_PDELR10_${S}_Frac10" "nnUNetTrainerPDE3D_GateScale10_${S}_Frac10"
    report full_labels "${FULL[0]}" "${FULL[@]}"
    ;;
  rows)
    echo "few labels: ${FEW[*]}"
    echo "few labels, training order: ${FEW_TRAIN_ORDER[*]}"
    echo "full labels: ${FULL[*]}"
    ;;
  *)
    awk 'NR == 1 {next} !/^#/ {exit} {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"
    exit 2
    ;;
esac
