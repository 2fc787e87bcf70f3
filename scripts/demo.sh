#!/usr/bin/env bash
# The README's first command: set everything up and run the application on the sample CT studies.
#
#   bash scripts/demo.sh
#
# 1. creates .venv from requirements.txt (first run: a few minutes);
# 2. builds the demo model folder into build/demo/model from registry data (first run only:
#    about 30 minutes on 2 AMX CPU cores (bf16), about 70 on 2 AVX2-only cores (fp32);
#    TAGS_MODEL=/path/to/model-folder skips it);
# 3. writes the sample studies (TotalSegmentator example series, LiTS-117 as a CT series);
# 4. runs the application on each study and prints where the SEG is and one line per segment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
ulimit -s 32768 2>/dev/null || true
MODEL=${TAGS_MODEL:-build/demo/model}
if [ ! -f "$MODEL/metadata.json" ]; then
    echo "[demo] building the demo model into build/demo (first run only, 30-70 min on 2 cores)"
    .venv/bin/tags-train demo build/demo
    MODEL=build/demo/model
fi
if [ ! -d build/studies/lits117 ] || [ ! -d build/studies/totalseg ]; then
    .venv/bin/tags-train sample-study build/studies --overwrite
fi
for study in lits117 totalseg; do
    out=build/output/$study
    rm -rf "$out"
    echo "[demo] running the application on build/studies/$study"
    .venv/bin/python app -i "build/studies/$study" -o "$out" -m "$MODEL" 2> "build/app-$study.log" \
        || { tail -n 20 "build/app-$study.log"; exit 1; }
    grep -E "organ liver|liver_tumor:|stage timings" "build/app-$study.log" | sed 's/^.*) - /    /'
    .venv/bin/python -m operators.seg_summary "$out" 2>/dev/null
done
