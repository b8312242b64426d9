#!/usr/bin/env bash
# The GPU benchmark set, one part per call (not yet run on a GPU: no device was lent so far; the toy
# part at 400k steps needs more than one 10-minute device call and is meant for a machine without that limit).
#
#   bash benchmarks/gpu_campaign.sh <part> [<out dir>]
#
# Parts: throughput | fid | likelihood | toy | diffusion | all (all: every part in turn, for a machine without a per-call limit).
# Results go to benchmarks/results/ (and are copied to <out dir>, e.g. the device tool's $OUT).
# On the project's GPU machine the packages its python lacks travel as wheels in .whl/ (see
# ../shared/ENVIRONMENT.md and the device README): hydra-core, omegaconf, antlr4-python3-runtime,
# torch-fidelity, zuko. FID needs the Inception weights where eval.inception_weights=auto finds them
# (python -m gentrain.metrics.inception builds them offline; fp16, 43.7 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: gpu_campaign.sh throughput|fid|likelihood|toy|diffusion|all [out dir]}
out=${2:-}
if [ -d .whl ] && ! python3 -c "import hydra, torch_fidelity" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1

run_part() {
    case "$1" in
        throughput) python3 benchmarks/throughput.py --device cuda --compile --steps 500 --repeats 3 ;;
        fid) python3 benchmarks/fid_table.py --device cuda --n 10000 ;;
        likelihood) python3 benchmarks/likelihood.py --dataset fashion_mnist --device cuda --steps 20000 --n-eval 10000 ;;
        toy) python3 benchmarks/toy_modes.py --paper --seeds 0 1 2 --steps 400000 --jobs 6 --device cuda ;;
        diffusion) python3 benchmarks/diffusion.py --gpu --device cuda ;;
        all) for p in throughput fid likelihood toy diffusion; do run_part "$p"; done ;;
        *) echo "unknown part $1; use throughput, fid, likelihood, toy, diffusion or all" >&2; exit 2 ;;
    esac
}
start=$(date +%s)
run_part "$part"
echo "gpu_campaign $part: $(( $(date +%s) - start )) s"
if [ -n "$out" ]; then cp benchmarks/results/*.md "$out"/ 2>/dev/null || true; fi
