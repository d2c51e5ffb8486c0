#!/usr/bin/env bash
# The GPU figures as JSON lines, in calls of under 9 minutes each on one H100 (each part has its
# own time limit; a part that fails is reported and does not stop the others; the exit code says so):
#
#   bash bench/gpu.sh [OUTDIR]          # decoding (seed's way, ours, transformers' static cache, speculation's
#                                       # edit / echo / no match rows at 1 and 8 streams), a restart's
#                                       # warm-up, int8 / int4 at 1 stream, LoRA and QLoRA training
#   bash bench/gpu.sh --rest [OUTDIR]   # bitsandbytes 8bit / 4bit under plain generate, int4 at 32 streams,
#                                       # the MLP products each way, one row and batched (bench.rows)
#   bash bench/gpu.sh --eval [OUTDIR]   # HumanEval's 164 prompts as training.evaluate runs them (bench.humaneval)
#   bash bench/gpu.sh --tiny [OUTDIR]   # every part on a tiny model on the CPU (a minute or two), as the tests do
#
# Why several: bitsandbytes loads a saved checkpoint (a minute to write it) and an engine for 32 streams
# compiles 24 graphs; with the rest that is more than 9 minutes. int8 at 32 streams is in none: its engine
# did not finish its start-up within its part's limit on an H100 (docs/benchmarks.md); it runs alone with
#   python3 -m bench.quantized --paths torchao --torchao int8 --streams 32
# OUTDIR (default: $OUT, else a new temporary folder) gets gpu.jsonl and gpu.log.
# Inductor's caches go to OUTDIR/inductor-cache unless TORCHINDUCTOR_CACHE_DIR is set, so the
# restart line shows what a second start of the app costs.
set -uo pipefail
cd "$(dirname "$0")/.."
which=main
if [[ "${1:-}" == --tiny || "${1:-}" == --rest || "${1:-}" == --eval ]]; then which=${1#--}; shift; fi
out="${1:-${OUT:-$(mktemp -d)}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$out/inductor-cache}"
# A GPU machine that cannot reach PyPI gets its missing wheels (torchao, bitsandbytes) carried in .whl/:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl torchao==0.18.0
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_24_x86_64 -d .whl bitsandbytes==0.50.2
if ! python3 -c "import torchao, bitsandbytes" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
start=$SECONDS
status=0
part() {  # part SECONDS NAME ARGS...: one python -m run, its JSON lines to gpu.jsonl, everything to gpu.log
    local limit=$1 name=$2
    shift 2
    echo "== $name (limit ${limit}s, at $((SECONDS - start))s)" | tee -a "$out/gpu.log" >&2
    if ((limit < 20)); then
        status=1
        printf '{"bench": "gpu.sh", "part": "%s", "failed": "no time left", "at_s": %d}\n' "$name" $((SECONDS - start)) >>"$out/gpu.jsonl"
        return
    fi
    timeout "$limit" python3 -m "$@" 2>>"$out/gpu.log" | tee -a "$out/gpu.log" | grep '^{' >>"$out/gpu.jsonl"
    local code=${PIPESTATUS[0]}
    if ((code != 0)); then
        status=1
        printf '{"bench": "gpu.sh", "part": "%s", "failed": "exit %d", "at_s": %d}\n' "$name" "$code" $((SECONDS - start)) >>"$out/gpu.jsonl"
        tail -5 "$out/gpu.log" >&2
    fi
}
if [[ $which == tiny ]]; then
    part 240 generate bench.generate --tiny --streams 1,4 --peer-streams 1 --spec-streams 1,4 --spec-new 16
    part 120 restart bench.generate --tiny --streams 1,4 --start-up-only
    part 120 quantized bench.quantized --tiny --streams 1,4 --paths torchao
    part 240 train bench.train --tiny --steps 2
    part 120 bitsandbytes bench.quantized --tiny --paths bitsandbytes
    part 120 humaneval bench.humaneval --tiny
    part 120 rows bench.rows --tiny --limit 90
elif [[ $which == eval ]]; then
    part 400 humaneval bench.humaneval
elif [[ $which == rest ]]; then
    part 170 bitsandbytes bench.quantized --paths bitsandbytes --streams 1
    part 250 quantized bench.quantized --paths torchao --torchao int4 --streams 32
    part $((535 - (SECONDS - start))) rows bench.rows --limit $((500 - (SECONDS - start)))
else
    part 330 generate bench.generate --streams 1,32
    part 45 restart bench.generate --streams 1,32 --start-up-only
    part 220 quantized bench.quantized --paths torchao --streams 1
    part $((535 - (SECONDS - start))) train bench.train
fi
echo "== done in $((SECONDS - start))s: $out/gpu.jsonl" >&2
cat "$out/gpu.jsonl"
exit $status
