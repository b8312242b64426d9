#!/usr/bin/env bash
# The GPU benchmark campaign in ONE device call of at most ~8 minutes (the lent machine: 15 minutes of device time in all,
# at most 10 per command, 64 MiB of working tree + carried paths; its python3 lacks hydra-core, omegaconf and torch-fidelity,
# has no internet and no Fashion-MNIST).
#
#   bash benchmarks/gpu_prepare.sh                        # here, on the CPU: builds .carry/ (wheels, fp16 Inception, data subset)
#   bash benchmarks/gpu_campaign.sh --out $OUT            # on the GPU: one device call with carry=[".carry"]
#   bash benchmarks/gpu_campaign.sh --dry-run [--out DIR] # here: every stage on the CPU at tiny sizes (~1-2 minutes)
#   bash benchmarks/gpu_campaign.sh --out $OUT --stages "inception models"   # a rerun of some stages
#
# Set-up (before the stages, a few seconds): the carried wheels (.carry/whl) whose module this python lacks are installed
# with `pip install --no-index --no-deps --target <tmp>/site` (unzipped if pip is missing) and put on PYTHONPATH;
# GENTRAIN_INCEPTION_WEIGHTS = the carried fp16 weights; GENTRAIN_FASHION_DIR = the carried Fashion-MNIST subset
# (20k train + t10k; the stages pass dataset.system_dir=<it>), GENTRAIN_DATA = a folder whose FashionMNIST/raw is it;
# GENTRAIN_CACHE = a fresh folder (so the FID timing computes its reference once, then reads it from the cache).
#
# Stages, each under its own `timeout` (seconds below; 450 in all; GPU_T_<STAGE>=N overrides one; none starts past
# GPU_CAMPAIGN_LIMIT=470 s and each is cut to what is left of it). Each writes benchmarks/results/gpu_<stage>.md and .jsonl
# (a dry-run: a temp folder instead), rewritten after every run inside it, so a stage that times out keeps what it measured.
# A stage that fails or times out is recorded as such, and the next one runs.
#   smoke        120 s  benchmarks/gpu_smoke.py smoke: DCGAN-NS 40 steps, batch 64, fp32/bf16/fp16 x compile false / true /
#                       true+reduce-overhead / step: steps/s, finite losses, CUDA-graph skips, graph breaks, host syncs
#   throughput   120 s  benchmarks/throughput.py --device cuda --modes eager phase reduce-overhead step (--compile when this
#                       throughput.py has no --modes) --steps 300 --warmup 50 --repeats 2 --workloads dcgan_ns wgan_gp
#                       (the two workloads with GPU targets; all five x 4 modes x 3 repeats is ~10 minutes: see below).
#                       GPU_THROUGHPUT_ARGS replaces the arguments after --modes. Run through `gpu_smoke.py wrap`, which
#                       leaves out each run's curves.png when matplotlib is missing (the GPU machine has none, and
#                       throughput.py does not pass logger.curves=false)
#   inception     70 s  benchmarks/fid_benchmark.py: Inception images/s in fp32 (strict and TF32), bf16 and fp16 autocast
#                       and fp16 .half(), their max/mean abs feature error vs fp32 on 500 test images, the train-vs-test
#                       fid10k with each, and gentrain's Evaluator fid10k (untrained DCGAN, 10k vs the first 10k test
#                       images) twice: once computing the reference, once reading it from the cache
#   models        55 s  benchmarks/gpu_smoke.py models: every configs/model/*.yaml, 60 steps on Fashion-MNIST
#   streaming     30 s  benchmarks/gpu_smoke.py streaming: data on the device / host memory / a PNG folder in memory /
#                       streamed through DataLoader workers (4 and 0)
#   ddpm_sizing   55 s  benchmarks/gpu_smoke.py ddpm_sizing: the U-Net at model.channels 32/64/128 x batch 64/128 x fp32/bf16:
#                       steps/s and peak memory
#
# What comes back (--out, e.g. the device tool's $OUT, at most 8 files): gpu_campaign.md (the set-up, a table of the
# stages' status and time, then every stage's own .md, or its log's tail when it failed) and gpu_campaign_<date>.tar.gz
# (every results file and every stage's log). Both are rewritten after each stage.
#
# --dry-run: every stage on the CPU (one thread), tiny sizes (debug=tiny, 4 steps, a few Inception images, FIDs on the
# first 64 features, compile with the aot_eager backend, throughput.py eager only), results in a temp folder (printed),
# matplotlib hidden as on the GPU machine, the carried pure-Python wheels test-installed into a temp folder. Real data
# and weights when .carry/ or the system copies have them; else random Fashion-MNIST-format files and an Inception
# stand-in. Its purpose: the one GPU call does not fail on a typo.
#
# What does NOT fit one call (each needs its own device time; carry what it needs, within 64 MiB):
#   - benchmarks/toy_modes.py --paper --seeds 0 1 2 --steps 400000 --jobs 6 --device cuda (PacGAN's Table 1): 18 runs of
#     400k steps; toy_modes.py cannot resume its runs: NEEDS A LONGER MACHINE.
#   - benchmarks/fid_table.py --device cuda --n 10000 (the full FID table, 6 presets of 10k G steps, up to 50k D steps,
#     each + fid10k): split by row, one or two per call: `python3 benchmarks/fid_table.py --device cuda --n 10000 --models
#     non_saturating minimax` ... (each call writes its own --out; merge the .jsonl). With this carry the rows train on the
#     20k-image subset, not the 55k of the published numbers: the full train set (26 MB) does not fit beside the weights
#     (44 MB), so the paper setting NEEDS A LONGER MACHINE (or two calls on one warm machine: the weights stay there).
#   - benchmarks/likelihood.py --dataset fashion_mnist --device cuda --steps 20000 --n-eval 10000: no FID, so carry the
#     full train set instead of the weights (bash benchmarks/gpu_prepare.sh --fashion-train 60000 --no-inception) and
#     split by model (--models realnvp, ...). A model whose 20k steps do not fit one call: train it with the CLI under
#     `timeout -s TERM 540 python3 -m gentrain <its overrides> trainer.max_steps=20000 hydra.run.dir=outputs/lik_<model>`
#     (SIGTERM stops at a step boundary and writes checkpoints/last.pt), carry outputs/lik_<model> to the next call and
#     continue with `python3 -m gentrain trainer.resume=outputs/lik_<model>`; then score best.pt with task=eval.
#   - the full throughput table (5 workloads x 4 modes x 3 repeats x engine and plain): ~10 minutes: a call of its own:
#     GPU_THROUGHPUT_ARGS="--steps 300 --warmup 50 --repeats 3" GPU_T_THROUGHPUT=540 bash benchmarks/gpu_campaign.sh
#     --stages throughput --out $OUT (splitting by --workloads where it does not fit).
set -uo pipefail
CALLER=$PWD
cd "$(dirname "$0")/.."
REPO=$PWD

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
dry=0
out=""
ALL_STAGES="smoke throughput inception models streaming ddpm_sizing"
stages=$ALL_STAGES
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --out) out=${2:?--out needs a folder}; shift ;;
        --stages) stages=${2:?--stages needs a list, e.g. \"smoke models\"}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument $1; usage: bash benchmarks/gpu_campaign.sh [--dry-run] [--out DIR] [--stages \"$ALL_STAGES\"]" >&2; exit 2 ;;
    esac
    shift
done
for s in $stages; do
    case " $ALL_STAGES " in *" $s "*) ;; *) echo "error: unknown stage $s; the stages: $ALL_STAGES" >&2; exit 2 ;; esac
done

PY=${PYTHON:-python3}
CARRY=${GPU_CARRY:-$REPO/.carry}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_campaign.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
TAG=$(date -u +%Y%m%d_%H%M%S)
LIMIT=${GPU_CAMPAIGN_LIMIT:-470}
if [ "$dry" = 1 ]; then
    RESULTS=$(mktemp -d "${TMPDIR:-/tmp}/gpu_campaign_dryrun.XXXXXX")
    LIMIT=${GPU_CAMPAIGN_LIMIT:-900}
else
    RESULTS=$REPO/benchmarks/results
fi
LOGS=$RESULTS/gpu_campaign_logs
mkdir -p "$RESULTS" "$LOGS" "$WORK/site"
if [ -n "$out" ]; then case "$out" in /*) ;; *) out=$CALLER/$out ;; esac; mkdir -p "$out"; fi
T0=$(date +%s)
NOTES=()
note() { NOTES+=("$1"); echo "gpu_campaign: $1"; }

# ------------------------------------------------------------------------------------------------ set-up
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ "$dry" = 1 ]; then
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
    # the GPU machine has no matplotlib: hide this one, so the dry-run takes the same paths
    mkdir -p "$WORK/hide/matplotlib"
    echo 'raise ImportError("matplotlib is hidden by gpu_campaign.sh --dry-run (the GPU machine has none)")' > "$WORK/hide/matplotlib/__init__.py"
    export GPU_CAMPAIGN_NO_MATPLOTLIB=1
    export PYTHONPATH="$WORK/hide:$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi

# wheels: install those whose module is missing (module:wheel-name prefix)
missing=()
absent=$("$PY" - hydra omegaconf antlr4 torch_fidelity yaml packaging tqdm <<'EOF'
import importlib, sys
missing = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
print(" ".join(missing))
EOF
) || { echo "error: $PY does not run" >&2; exit 2; }
for pair in hydra:hydra_core omegaconf:omegaconf antlr4:antlr4_python3_runtime torch_fidelity:torch_fidelity yaml:pyyaml packaging:packaging tqdm:tqdm; do
    mod=${pair%%:*} whl=${pair#*:}
    if [[ " $absent " == *" $mod "* ]]; then
        found=$(ls "$CARRY"/whl/"$whl"-*.whl 2>/dev/null | head -1)
        if [ -n "$found" ]; then missing+=("$found"); else note "module $mod is missing and $CARRY/whl has no $whl wheel"; fi
    fi
done
install_wheels() {  # target, wheels...
    local target=$1; shift
    if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$target" "$@" >"$WORK/pip.log" 2>&1 && return 0
        cat "$WORK/pip.log" >&2
    fi
    local w; for w in "$@"; do "$PY" -m zipfile -e "$w" "$target" || return 1; done  # a wheel is a zip of its files
}
if [ ${#missing[@]} -gt 0 ]; then
    if install_wheels "$WORK/site" "${missing[@]}"; then note "installed from $CARRY/whl: $(for w in "${missing[@]}"; do basename "$w" | cut -d- -f1-2; done | tr '\n' ' ')"
    else note "installing the carried wheels FAILED"; fi
fi
if [ "$dry" = 1 ] && ls "$CARRY"/whl/*-py3-none-any.whl >/dev/null 2>&1; then  # the install command itself, on the pure wheels
    if install_wheels "$WORK/site_check" "$CARRY"/whl/*-py3-none-any.whl && [ -d "$WORK/site_check/hydra" ] && [ -d "$WORK/site_check/torch_fidelity" ]; then
        note "dry-run: the carried pure-Python wheels install into a --target folder (pip --no-index --no-deps, or unzipped without pip; $(ls "$CARRY"/whl/*.whl | wc -l) wheels in $CARRY/whl)"
    else note "dry-run: installing the carried wheels FAILED"; fi
fi
if ! env_line=$("$PY" - "$dry" <<'EOF'
import platform, sys
import torch, hydra, omegaconf, torch_fidelity, gentrain
cuda = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), hydra-core {hydra.__version__}, omegaconf {omegaconf.__version__}, "
      f"torch-fidelity {torch_fidelity.__version__}, gentrain {gentrain.__version__}; {name}")
if sys.argv[1] == "0" and not cuda:
    sys.exit("error: no CUDA device here; run the campaign on the GPU machine, or --dry-run on a CPU")
EOF
); then
    echo "gpu_campaign: the set-up failed (above): no stage can run" >&2
    exit 2
fi
note "$env_line"
if "$PY" -c "import matplotlib" 2>/dev/null; then :; else note "matplotlib is missing: runs draw no curves.png (gpu_smoke.py passes logger.curves=false; throughput.py runs through gpu_smoke.py wrap)"; fi
if command -v nvidia-smi >/dev/null 2>&1; then note "nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null | head -1)"; fi

# Inception weights
weights=$(ls "$CARRY"/inception/*.pth 2>/dev/null | head -1)
stub=()
if [ -n "$weights" ]; then
    export GENTRAIN_INCEPTION_WEIGHTS=$weights
    note "Inception weights: $weights ($(du -m "$weights" | cut -f1) MB)"
elif [ "$dry" = 1 ]; then
    stub=(--stub-if-missing)
    note "Inception weights: none carried; eval.inception_weights=auto, else a stand-in (dry-run)"
else
    note "Inception weights: NONE in $CARRY/inception (run bash benchmarks/gpu_prepare.sh): the inception stage will fail"
fi

# Fashion-MNIST
has_fashion() { local d=$1 f; for f in train-images-idx3 train-labels-idx1 t10k-images-idx3 t10k-labels-idx1; do
    [ -f "$d/$f-ubyte.gz" ] || [ -f "$d/$f-ubyte" ] || return 1; done; }
if has_fashion "$CARRY/fashion-mnist"; then fashion=$CARRY/fashion-mnist
elif has_fashion /usr/share/datasets/fashion-mnist; then fashion=/usr/share/datasets/fashion-mnist
elif [ "$dry" = 1 ]; then fashion=$WORK/fashion; "$PY" benchmarks/gpu_smoke.py fake-fashion "$fashion" >/dev/null
else fashion=""; note "Fashion-MNIST: NONE in $CARRY/fashion-mnist (run bash benchmarks/gpu_prepare.sh): the stages will fail"; fi
if [ -n "$fashion" ]; then
    export GENTRAIN_FASHION_DIR=$fashion
    mkdir -p "$WORK/data/FashionMNIST" && ln -s "$fashion" "$WORK/data/FashionMNIST/raw"
    export GENTRAIN_DATA=$WORK/data
    note "Fashion-MNIST: $fashion (dataset.system_dir; GENTRAIN_DATA=$WORK/data finds it too)"
fi
export GENTRAIN_CACHE=$WORK/cache
if [ -f "$CARRY/MANIFEST.txt" ]; then note "carry: $(head -1 "$CARRY/MANIFEST.txt")"; fi
if git rev-parse --short HEAD >/dev/null 2>&1; then note "git $(git rev-parse --short HEAD)$(git diff --quiet 2>/dev/null || echo ' (working tree modified)')"; fi

# ------------------------------------------------------------------------------------------------ the stages
declare -A T=([smoke]=120 [throughput]=120 [inception]=70 [models]=55 [streaming]=30 [ddpm_sizing]=55)
if [ "$dry" = 1 ]; then for s in $ALL_STAGES; do T[$s]=150; done; fi
for s in $ALL_STAGES; do v="GPU_T_${s^^}"; [ -n "${!v:-}" ] && T[$s]=${!v}; done

stage_cmd() {  # the command of stage $1 (its timeout in $2), into the array CMD
    local s=$1 margin=$(( $2 / 4 > 15 ? $2 / 4 : 15 ))  # no new run in the last quarter (at least 15 s): a cold compile takes ~30 s
    local budget=$(( $2 > 2 * margin ? $2 - margin : $2 / 2 ))
    local smoke_args=(--out "$RESULTS/gpu_$s.md" --budget-s "$budget")
    [ "$dry" = 1 ] && smoke_args+=(--dry-run)
    case "$s" in
        smoke|models|streaming|ddpm_sizing) CMD=("$PY" benchmarks/gpu_smoke.py "$s" "${smoke_args[@]}") ;;
        throughput)
            local help modes=() m
            help=$("$PY" benchmarks/throughput.py --help 2>&1)
            if grep -q -- "--modes" <<<"$help"; then
                local want=(eager phase reduce-overhead step) listed; [ "$dry" = 1 ] && want=(eager)
                listed=$(grep -o -- '--modes {[^}]*}' <<<"$help" | head -1 | tr -d '{}' | cut -d' ' -f2 | tr ',' ' ')
                for m in eager phase reduce-overhead step; do  # each must be one of the choices the script lists (the dry-run checks all four)
                    if [[ " $listed " == *" $m "* ]]; then [[ " ${want[*]} " == *" $m "* ]] && modes+=("$m"); else note "throughput.py --modes does not offer $m (it offers: $listed): left out"; fi
                done
                modes=(--modes "${modes[@]}")
            elif [ "$dry" = 0 ]; then
                modes=(--compile); note "throughput.py has no --modes: --compile (eager and per-phase compiled rows)"
            else
                note "throughput.py has no --modes yet: the GPU run will pass --compile"
            fi
            if [ "$dry" = 1 ]; then
                CMD=("$PY" benchmarks/gpu_smoke.py wrap benchmarks/throughput.py --device cpu --threads 1 "${modes[@]}" --steps 2 --warmup 1 --repeats 1
                     --workloads dcgan_ns --batch-size 8 --out "$RESULTS/gpu_throughput.md")
            else
                # shellcheck disable=SC2206
                local sizing=(${GPU_THROUGHPUT_ARGS:---steps 300 --warmup 50 --repeats 2 --workloads dcgan_ns wgan_gp})
                CMD=("$PY" benchmarks/gpu_smoke.py wrap benchmarks/throughput.py --device cuda "${modes[@]}" "${sizing[@]}" --out "$RESULTS/gpu_throughput.md")
            fi ;;
        inception)
            rm -f "$RESULTS/gpu_inception.jsonl"
            local common=(--precisions fp32 bf16 fp16 fp16-half --protocol-calls 2 --cache-dir "$GENTRAIN_CACHE"
                          --out "$RESULTS/gpu_inception.jsonl" --md "$RESULTS/gpu_inception.md" "${stub[@]}")
            if [ "$dry" = 1 ]; then
                # one image per measurement: on the CPU, torch 2.14's fp16 convolutions run at about 0.2 images/s
                CMD=("$PY" benchmarks/fid_benchmark.py --device cpu --threads 1 --n 2 --batch-size 1 --throughput-images 1 --error-images 1
                     --fid-precisions bf16 fp16 --dry-run-features 64 "${common[@]}")
            else
                CMD=("$PY" benchmarks/fid_benchmark.py --device cuda --n 10000 --batch-size 250 --throughput-images 1000 --error-images 500
                     --fid-precisions bf16 fp16 "${common[@]}")
            fi ;;
    esac
}

STATUS=()
status_of() { local s; for s in "${STATUS[@]}"; do [ "${s%%|*}" = "$1" ] && { echo "$s"; return; }; done; }

write_summary() {
    local f=$RESULTS/gpu_campaign.md s line name st secs lim
    {
        echo "# GPU campaign$([ "$dry" = 1 ] && echo ' (DRY RUN on the CPU: tiny sizes, the numbers mean nothing)')"
        echo
        echo "Written by \`benchmarks/gpu_campaign.sh\` ($(date -u '+%Y-%m-%d %H:%M:%S UTC')); command: \`bash benchmarks/gpu_campaign.sh $([ "$dry" = 1 ] && echo '--dry-run ')${out:+--out $out }--stages \"$stages\"\`; $(( $(date +%s) - T0 )) s so far."
        echo
        for line in "${NOTES[@]}"; do echo "- $line"; done
        echo
        echo "| stage | status | wall (s) | timeout (s) | results |"
        echo "| --- | --- | ---: | ---: | --- |"
        for name in $stages; do
            s=$(status_of "$name")
            if [ -z "$s" ]; then echo "| $name | not run yet | | ${T[$name]} | |"; continue; fi
            IFS='|' read -r _ st secs lim <<<"$s"
            echo "| $name | $st | $secs | $lim | $(cd "$RESULTS" && ls gpu_"$name".* 2>/dev/null | tr '\n' ' ') |"
        done
        for name in $stages; do
            s=$(status_of "$name"); [ -z "$s" ] && continue
            echo; echo "---"; echo
            if [ -f "$RESULTS/gpu_$name.md" ]; then sed 's/^#/##/' "$RESULTS/gpu_$name.md"; fi
            case "$s" in *"|ok|"*) ;; *) echo; echo "Last lines of its log (gpu_campaign_logs/$name.log in the tarball):"; echo; echo '```'; tail -n 25 "$LOGS/$name.log" 2>/dev/null; echo '```' ;; esac
        done
    } > "$f.tmp" && mv "$f.tmp" "$f"
    if [ -n "$out" ]; then
        cp "$f" "$out/gpu_campaign.md"
        (cd "$RESULTS" && tar -czf "$out/.gpu_campaign_$TAG.tar.gz.tmp" gpu_campaign.md $(ls gpu_*.md gpu_*.jsonl 2>/dev/null | grep -v '^gpu_campaign.md$') gpu_campaign_logs \
            && mv "$out/.gpu_campaign_$TAG.tar.gz.tmp" "$out/gpu_campaign_$TAG.tar.gz")
    fi
}

for s in $stages; do rm -f "$RESULTS/gpu_$s.md" "$RESULTS/gpu_$s.jsonl"; done
rc_all=0
for s in $stages; do
    elapsed=$(( $(date +%s) - T0 ))
    left=$(( LIMIT - elapsed ))
    lim=${T[$s]}
    if [ "$left" -lt 20 ]; then
        STATUS+=("$s|skipped: the campaign's ${LIMIT} s were spent|0|$lim"); rc_all=1; write_summary; continue
    fi
    [ "$lim" -gt "$left" ] && lim=$left
    stage_cmd "$s" "$lim"
    echo "== stage $s (timeout ${lim} s): ${CMD[*]}"
    t=$(date +%s)
    timeout --kill-after=10 "$lim" "${CMD[@]}" >"$LOGS/$s.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - t ))
    have=$(ls "$RESULTS"/gpu_"$s".md 2>/dev/null)
    case "$rc" in
        0) if [ -n "$have" ]; then st=ok; else st="failed: no results file"; fi ;;
        124|137) st="timeout after $lim s$([ -n "$have" ] && echo ' (partial results kept)')" ;;
        3) st="partly failed: some runs failed (its table says which)" ;;
        *) st="failed (exit $rc)" ;;
    esac
    [ "$st" = ok ] || rc_all=1
    STATUS+=("$s|$st|$secs|$lim")
    echo "   $s: $st in $secs s"
    tail -n 2 "$LOGS/$s.log" | cut -c1-300 | sed 's/^/   | /'
    write_summary
done
write_summary
echo "gpu_campaign: $(( $(date +%s) - T0 )) s; summary $RESULTS/gpu_campaign.md${out:+, copied with gpu_campaign_$TAG.tar.gz to $out}"
for s in "${STATUS[@]}"; do IFS='|' read -r name st secs _ <<<"$s"; printf '  %-12s %-60s %5s s\n' "$name" "$st" "$secs"; done
exit $rc_all
