#!/usr/bin/env bash
# The GPU check: one command that proves every GPU path and measures the GPU figures, within ~8 minutes on
# one GPU (each stage has its own timeout, so one hang cannot eat the window).
#
#   bash benchmarks/gpu_check.sh                         # on a GPU machine: everything, figures -> benchmarks/results/gpu/
#   bash benchmarks/gpu_check.sh --dry-run               # the plan: stages, commands, time limit of each
#   VENV=.venv bash benchmarks/gpu_check.sh --device cpu --smoke   # the same script end to end on a CPU, tiny sizes
#
# Stages: setup (virtualenv + .[dev,gpu,bench], faiss-gpu in place of faiss-cpu), tests (tests/gpu with
# CONTAINER_SSL_REQUIRE_CUDA=1), throughput (ImageNet preset, ours vs lightly, MFU), knn (ImageNet-scale
# synthetic features, faiss-gpu vs torch), pretrain (CIFAR-10 Container-Light-tiny for what is left of the
# budget, with its online kNN). The exit status is non-zero when any stage fails.
#
# Options: --device cuda|cpu (default cuda), --smoke (tiny sizes; the CPU run CI does), --dry-run,
#          --budget-s S (whole check, default 480), --out DIR (figures; default benchmarks/results/gpu, or a
#          temporary folder with --smoke).
# Environment: VENV (default .venv: created and installed unless it already imports everything; a VENV set
#          by the caller is used as is, never installed into), PYTHON (python3, to create .venv), WHEELS
#          (a folder of wheels for an offline install: pip --no-index --find-links), CIFAR10 (default
#          ../shared/data/cifar10-jpeg.tar.gz).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

DEVICE=cuda SMOKE=0 DRY=0 BUDGET=480 OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=${2:?--device needs cuda or cpu}; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        --dry-run) DRY=1; shift ;;
        --budget-s) BUDGET=${2:?--budget-s needs seconds}; shift 2 ;;
        --out) OUT=${2:?--out needs a folder}; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "error: --device must be cuda or cpu, got $DEVICE" >&2; exit 2 ;; esac
case "$BUDGET" in ''|*[!0-9]*) echo "error: --budget-s must be a whole number of seconds" >&2; exit 2 ;; esac
if [ "$SMOKE" = 1 ] && [ "$BUDGET" = 480 ]; then BUDGET=900; fi
if [ -z "$OUT" ]; then
    if [ "$SMOKE" = 1 ]; then OUT=${TMPDIR:-/tmp}/container-ssl-gpu-check-smoke; else OUT=benchmarks/results/gpu; fi
fi
VENV_GIVEN=${VENV:+1}
VENV=${VENV:-.venv}
PY=$VENV/bin/python
CIFAR10=${CIFAR10:-../shared/data/cifar10-jpeg.tar.gz}
WORK=${OUT%/}/work                      # checkpoints and logs of the check; figures go to $OUT/*.json
[ "$SMOKE" = 0 ] && WORK=runs/gpu_check  # runs/ is git-ignored: no checkpoint lands in benchmarks/results
q() { printf '%q' "$1"; }
# packages carried in by the caller (e.g. wheels unpacked to a folder on PYTHONPATH) stay importable
EXTRA_PATH=${PYTHONPATH:+:$PYTHONPATH}

# ------------------------------------------------------------------------------------------ the stages
PIP="PIP_CONFIG_FILE=/dev/null $(q "$PY") -m pip"
[ -n "${WHEELS:-}" ] && PIP="$PIP --no-index --find-links $(q "$WHEELS")"
if [ "$DEVICE" = cuda ]; then
    EXTRAS=dev,gpu,bench
    FAISS_SWAP="$PIP uninstall -q -y faiss-cpu && $PIP install -q --force-reinstall --no-deps -c constraints.txt faiss-gpu"
    READY="import container_ssl, torch, pytest, lightly, faiss; assert torch.cuda.is_available(), 'torch sees no GPU'; assert faiss.get_num_gpus() > 0, 'faiss sees no GPU'"
else
    EXTRAS=dev,bench FAISS_SWAP=true
    READY="import container_ssl, torch, pytest, lightly, faiss"
fi
if [ -n "$VENV_GIVEN" ]; then  # a virtualenv named by the caller is used as is, never installed into
    SETUP="PYTHONPATH=.$(q "$EXTRA_PATH") $(q "$PY") -c $(q "$READY") && echo 'using $VENV as is'"
else
    SETUP="if PYTHONPATH=.$(q "$EXTRA_PATH") $(q "$PY") -c $(q "$READY") 2>/dev/null; then echo 'reusing $VENV'; else
  { test -x $(q "$PY") || ${PYTHON:-python3} -m venv $(q "$VENV"); } &&
  $PIP install -q -c constraints.txt -e '.[$EXTRAS]' && $FAISS_SWAP &&
  PYTHONPATH=.$(q "$EXTRA_PATH") $(q "$PY") -c $(q "$READY"); fi"
fi

RUN="PYTHONPATH=$(q "$REPO$EXTRA_PATH") $(q "$PY")"
if [ "$SMOKE" = 1 ]; then
    # the GPU tests' own logic, on the CPU (CUDA-only checks skip): the CPU-reference DINO step
    TESTS="CONTAINER_SSL_GPU_TESTS_DEVICE=cpu $RUN -m pytest -q -p no:cacheprovider tests/gpu -m cuda \
-k 'test_step_with_cpu_augmentation_matches_the_cpu_reference and none' --junitxml $(q "$WORK/tests.xml")"
    THROUGHPUT="$RUN benchmarks/throughput.py --preset cifar --device cpu --models container_light_nano \
--batch-size 8 --steps 1 --warmup 1 --out-dim 256 --json $(q "$OUT/throughput.json")"
    KNN="$RUN benchmarks/knn_bench.py --bank 4000 --queries 400 --dim 64 --device cpu --json $(q "$OUT/knn.json")"
    PRETRAIN_ARGS="device=cpu optim.amp=none channels_last=false data.subset=256 data.num_workers=0 \
optim.batch_size_per_gpu=32 model.name=container_light_nano model.patch_size=2 model.out_dim=256 \
model.hidden_dim=64 model.bottleneck_dim=32 aug.n_local=2 monitor.knn_train_images=256 \
monitor.knn_val_images=128 monitor.log_every=1 --probe-steps 2 --max-epochs 1"
else
    TESTS="CONTAINER_SSL_REQUIRE_CUDA=1 CONTAINER_SSL_REQUIRE_DATA=1 $RUN -m pytest -q -p no:cacheprovider tests/gpu \
-m cuda --junitxml $(q "$WORK/tests.xml")"
    THROUGHPUT="$RUN benchmarks/throughput.py --preset imagenet --device cuda --amp bf16 --channels-last \
--models container_light_small deit_small --batch-size 64 --steps 10 --warmup 3 --json $(q "$OUT/throughput.json")"
    KNN="$RUN benchmarks/knn_bench.py --bank 1281167 --queries 50000 --dim 384 --classes 1000 --device cuda \
--skip-unchunked --json $(q "$OUT/knn.json")"
    PRETRAIN_ARGS="--probe-steps 30"
fi
PRETRAIN="$RUN benchmarks/budgeted_pretrain.py --config configs/pretrain/cifar10_container_light_tiny_gpu.yaml \
--work $(q "$WORK/cifar10") --json $(q "$OUT/cifar10_pretrain.json") --budget-s \$BUDGET_LEFT \
data.path=$(q "$CIFAR10") data.cache_dir=$(q "$WORK/cache") $PRETRAIN_ARGS"

# name, time limit (s), command; the pretraining gets what is left of the budget (at least 60 s)
STAGES=(setup tests throughput knn pretrain)
declare -A LIMIT=([setup]=150 [tests]=240 [throughput]=120 [knn]=75 [pretrain]=0)
declare -A CMD=([setup]=$SETUP [tests]=$TESTS [throughput]=$THROUGHPUT [knn]=$KNN [pretrain]=$PRETRAIN)
if [ "$SMOKE" = 1 ]; then LIMIT[setup]=240 LIMIT[tests]=420 LIMIT[throughput]=300 LIMIT[knn]=150; fi

if [ "$DRY" = 1 ]; then
    echo "GPU check plan: device $DEVICE$([ "$SMOKE" = 1 ] && echo ', smoke sizes'), budget ${BUDGET}s, figures -> $OUT/"
    for s in "${STAGES[@]}"; do
        lim=${LIMIT[$s]}; [ "$lim" = 0 ] && lim="what is left of ${BUDGET}s (at least 60s)"
        echo; echo "[$s] time limit: $lim"; echo "  ${CMD[$s]}"
    done
    exit 0
fi

# ------------------------------------------------------------------------------------------ run them
mkdir -p "$OUT" "$WORK"
START=$(date +%s) FAILED=0
: > "$WORK/stages.tsv"
for s in "${STAGES[@]}"; do
    lim=${LIMIT[$s]}
    export BUDGET_LEFT=$(( BUDGET - ($(date +%s) - START) ))
    if [ "$lim" = 0 ]; then
        [ "$BUDGET_LEFT" -lt 60 ] && BUDGET_LEFT=60
        lim=$(( BUDGET_LEFT + 30 ))
    fi
    echo "== [$s] (time limit ${lim}s) ${CMD[$s]}"
    t0=$(date +%s)
    timeout --kill-after=15 "$lim" bash -c "${CMD[$s]}" 2>&1 | tee "$WORK/$s.log" | tail -n 25
    rc=${PIPESTATUS[0]}
    dt=$(( $(date +%s) - t0 ))
    status=ok; [ "$rc" != 0 ] && { status="failed (exit $rc$([ "$rc" = 124 ] && echo ', timed out'))"; FAILED=1; }
    printf '%s\t%s\t%s\t%s\n' "$s" "$rc" "$dt" "$status" >> "$WORK/stages.tsv"
    echo "== [$s] $status in ${dt}s"
    if [ "$s" = setup ] && [ "$rc" != 0 ]; then echo "error: setup failed; the other stages need it" >&2; break; fi
done

PYTHONPATH="$REPO$EXTRA_PATH" "$PY" - "$OUT" "$WORK" "$DEVICE" "$SMOKE" "$(( $(date +%s) - START ))" <<'PYEOF' || FAILED=1
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, work, device, smoke, total = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
stages = [dict(zip(("stage", "rc", "seconds", "status"), l.split("\t"))) for l in (work / "stages.tsv").read_text().splitlines()]
summary = {"device": device, "smoke": smoke, "total_seconds": total, "stages": stages}
if (work / "tests.xml").is_file():
    r = ET.parse(work / "tests.xml").getroot()
    suite = r if r.tag == "testsuite" else r.find("testsuite")
    summary["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.is_file() else None
lines = [f"GPU check on {device}{' (smoke sizes)' if smoke else ''}: {total} s"]
for s in stages:
    lines.append(f"  {s['stage']:11s} {s['status']:28s} {s['seconds']:>5s} s")
if "tests" in summary:
    t = summary["tests"]
    lines.append(f"tests/gpu: {t['tests']} run, {t['failures'] + t['errors']} failed, {t['skipped']} skipped")
tp = load("throughput.json")
for row in (tp or {}).get("rows", []):
    lines.append(f"throughput {row['impl']:7s} {row['model']:22s} {row['images_per_s']:9.1f} img/s  "
                 f"MFU {100 * row['mfu']:5.1f}%  peak {row['peak_mem_mb']:.0f} MB")
for model, ratio in (tp or {}).get("ratio_to_lightly", {}).items():
    lines.append(f"throughput {model}: ours / lightly = {ratio:.2f}x")
kn = load("knn.json")
for row in (kn or {}).get("rows", []):
    lines.append(f"kNN {row['method']:14s} {row['seconds']:8.2f} s  top-1 {row['top1']:.2f}")
pt = load("cifar10_pretrain.json")
if pt:
    knn = pt.get("online_knn") or {}
    lines.append(f"CIFAR-10 pretraining: {pt.get('epochs')} epoch(s), {pt.get('images_per_s') or 0:.0f} img/s, "
                 f"online kNN@{knn.get('k', '?')} top-1 {knn.get('top1', float('nan')):.2f}%")
summary["figures"] = {"throughput": tp, "knn": kn, "cifar10_pretrain": pt}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print("\n".join(lines))
print(f"figures: {out}/ (summary.json, throughput.json, knn.json, cifar10_pretrain.json)")
PYEOF
exit $FAILED
