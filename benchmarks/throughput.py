"""DINO training-step throughput: ours vs lightly's DINO building blocks, and MFU against the hardware.

The step is the whole DINO iteration: multi-crop augmentation of a batch, teacher forward on the global
crops, student forward on all crops, DINO loss, backward, optimizer step and EMA update.

- ours: :meth:`container_ssl.ssl.trainer.DinoTrainer.train_step` (crops of one resolution batched through
  the backbone once), with the CPU (torchvision v2, per image) or the batched kornia augmentation;
- lightly: the same backbone, crops and batch with lightly's DINOTransform, DINOProjectionHead, DINOLoss
  and update_momentum, used as its documentation shows (one forward per view).

Each measurement runs in a fresh subprocess so peak memory is its own. MFU = model FLOPs of one step
x steps/s / the FLOP/s of a large matmul timed in the same run. Model FLOPs follow the usual MFU convention:
forward FLOPs counted by FlopCounterMode (student on all crops, teacher on the global crops), with the
student's backward taken as twice its forward. (Counting the backward with FlopCounterMode instead puts a
depthwise convolution's backward at ~4.5x its forward, which pushed Container-Light past 100% MFU.) The loss
of both implementations on the same inputs and weights is printed to show equal correctness.

    python benchmarks/throughput.py --preset cifar --device cpu               # 32/16 px, 2+2 crops
    python benchmarks/throughput.py --preset imagenet --device cuda --amp bf16 --channels-last
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PRESETS = {  # global size, local size, local crops, patch size (DeiT) / stem stride (Container)
    "cifar": {"global_size": 32, "local_size": 16, "n_local": 2, "patch": {"deit": 4, "container": 2}},
    "imagenet": {"global_size": 224, "local_size": 96, "n_local": 8, "patch": {"deit": 16, "container": 4}},
}
DEFAULT_MODELS = ["container_light_tiny", "deit_tiny", "container_light_small", "deit_small"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cifar")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--impl", nargs="+", default=["ours", "lightly"], choices=["ours", "lightly"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=0, help="default: 64 on CPU, 128 on GPU")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--aug", choices=["cpu", "gpu"], default="", help="ours: augmentation back-end (default: gpu "
                   "on CUDA, cpu otherwise)")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--out-dim", type=int, default=0, help="head prototypes (default 4096 cifar, 65536 imagenet)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--single", help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    args = p.parse_args()
    if not args.batch_size:
        args.batch_size = 128 if args.device.startswith("cuda") else 64
    if not args.aug:
        args.aug = "gpu" if args.device.startswith("cuda") else "cpu"
    if not args.out_dim:
        args.out_dim = 4096 if args.preset == "cifar" else 65536
    if args.single:
        impl, model = args.single.split(":")
        print(json.dumps(measure(impl, model, args)))
        return
    run_all(args)


# ------------------------------------------------------------------------------------------- driver
def run_all(args: argparse.Namespace) -> None:
    peak = matmul_peak(args.device, args.amp)
    print(f"machine: {machine()}; device {args.device}; matmul peak {peak / 1e12:.2f} TFLOP/s "
          f"({'bf16' if args.amp == 'bf16' else 'fp32'})")
    print(f"command: python {' '.join(sys.argv)}")
    rows, failed = [], []
    for model in args.models:
        for impl in args.impl:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--single", f"{impl}:{model}"]
            done = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if done.returncode:
                print(f"{impl:8s} {model:22s} failed: {done.stderr.strip().splitlines()[-1:]}")
                failed.append(f"{impl}:{model}")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["mfu"] = row["flops_per_step"] * row["steps_per_s"] / peak
            rows.append(row)
    header = f"{'impl':8s} {'model':22s} {'img/s':>8s} {'peak mem MB':>12s} {'GFLOP/step':>11s} {'MFU':>7s} {'loss':>9s}"
    print(header)
    for r in rows:
        print(f"{r['impl']:8s} {r['model']:22s} {r['images_per_s']:8.1f} {r['peak_mem_mb']:12.0f} "
              f"{r['flops_per_step'] / 1e9:11.1f} {100 * r['mfu']:6.2f}% {r['loss']:9.4f}")
    ratios = {}
    for model in args.models:
        ours = next((r for r in rows if r["model"] == model and r["impl"] == "ours"), None)
        peer = next((r for r in rows if r["model"] == model and r["impl"] == "lightly"), None)
        if ours and peer:
            ratios[model] = ours["images_per_s"] / peer["images_per_s"]
            print(f"{model}: ours/lightly = {ratios[model]:.2f}x; "
                  f"same-input loss ours {ours['ref_loss']:.6f} vs lightly {peer['ref_loss']:.6f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine(), "command": " ".join(sys.argv),
                                               "matmul_peak_flops": peak, "amp": args.amp,
                                               "channels_last": args.channels_last, "rows": rows,
                                               "ratio_to_lightly": ratios, "failed": failed}, indent=2))
    if failed:  # a benchmark that measured nothing must not look like a success
        sys.exit(f"error: {len(failed)} measurement(s) failed: {', '.join(failed)}")


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} / {os.cpu_count()} CPU cores"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def matmul_peak(device: str, amp: str) -> float:
    """FLOP/s of a large square matmul in the step's precision: the practical hardware ceiling."""
    n = 8192 if device.startswith("cuda") else 2048
    dtype = torch.bfloat16 if amp == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(5):  # the fastest of a few timings: the ceiling, not an average disturbed by other load
        reps = 10 if device.startswith("cuda") else 1
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n ** 3 / best


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------ one measurement
def measure(impl: str, model: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    preset = PRESETS[args.preset]
    images = sample_images(args.batch_size, preset["global_size"])
    step, ref_loss, (student, teacher) = (ours_step if impl == "ours" else lightly_step)(model, preset, images, args)
    for _ in range(args.warmup):
        step()
    sync(args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    flops = model_flops(student, teacher, preset, args)
    sync(args.device)
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync(args.device)
    dt = (time.perf_counter() - t) / args.steps
    if args.device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "model": model, "images_per_s": args.batch_size / dt, "steps_per_s": 1 / dt,
            "peak_mem_mb": peak_mb, "flops_per_step": flops, "loss": float(loss), "ref_loss": ref_loss,
            "batch_size": args.batch_size, "device": args.device, "preset": args.preset}


def model_flops(student: torch.nn.Module, teacher: torch.nn.Module, preset: dict, args: argparse.Namespace) -> float:
    """FLOPs of one step: 3x the student's forward on all crops (forward + backward) + the teacher's forward."""
    from torch.utils.flop_counter import FlopCounterMode

    b, g, l = args.batch_size, preset["global_size"], preset["local_size"]
    views = [torch.zeros(b, 3, g, g, device=args.device)] * 2 + [torch.zeros(b, 3, l, l, device=args.device)] * preset["n_local"]

    def forward_flops(net: torch.nn.Module, crops: list) -> int:
        was = net.training
        net.eval()  # eval: BatchNorm running statistics stay untouched (BN FLOPs are not counted anyway)
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                for v in crops:
                    net(v)
        finally:
            net.train(was)
        return counter.get_total_flops()

    return 3 * forward_flops(student, views) + forward_flops(teacher, views[:2])


def sample_images(n: int, size: int) -> list:
    """Real CIFAR-10 images when the shared archive is there (32 px), else random RGB images of ``size``."""
    from PIL import Image

    archive = Path(os.environ.get("CONTAINER_SSL_CIFAR10", Path(__file__).resolve().parents[1].parent
                                  / "shared/data/cifar10-jpeg.tar.gz"))
    out = []
    if archive.is_file() and size == 32:
        import tarfile

        with tarfile.open(archive) as tar:
            for m in tar:
                if m.isfile() and m.name.endswith(".jpg"):
                    out.append(Image.open(tar.extractfile(m)).convert("RGB"))
                    if len(out) == n:
                        break
        return out
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        arr = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
        out.append(Image.fromarray(arr))
    return out


def common_overrides(model: str, preset: dict, args: argparse.Namespace) -> list[str]:
    family = "deit" if model.startswith("deit") else "container"
    return [f"model.name={model}", f"model.img_size={preset['global_size']}",
            f"model.patch_size={preset['patch'][family]}", f"model.out_dim={args.out_dim}",
            f"aug.global_size={preset['global_size']}", f"aug.local_size={preset['local_size']}",
            f"aug.n_local={preset['n_local']}", f"optim.batch_size_per_gpu={args.batch_size}",
            f"optim.amp={args.amp}", f"channels_last={str(args.channels_last).lower()}",
            f"device={'cuda' if args.device.startswith('cuda') else 'cpu'}", "monitor.log_every=1000000",
            "monitor.log_images=false", "optim.warmup_epochs=0", "data.num_workers=0"]


def ours_step(model: str, preset: dict, images: list, args: argparse.Namespace):
    from torch.utils.data import default_collate

    from container_ssl.config import load_config
    from container_ssl.ssl.loader import build_augmentation
    from container_ssl.ssl.trainer import DinoTrainer

    folder = Path(tempfile.mkdtemp(prefix="bench-"))
    data = folder / "data"  # the run folder sits beside the data: the trainer refuses one inside it
    for i, im in enumerate(images):  # a tiny ImageFolder so the trainer can be built as in a real run
        (data / "train" / "x").mkdir(parents=True, exist_ok=True)
        im.save(data / "train" / "x" / f"{i}.png")
    cfg = load_config(overrides=common_overrides(model, preset, args) + [
        f"data.path={data}", f"output_dir={folder / 'run'}", f"aug.backend={args.aug}"])
    trainer = DinoTrainer(cfg, auto_resume=False)
    it = [0]
    transform, _ = build_augmentation(cfg.aug, torch.device("cpu"))  # the trainer holds the batched part
    if args.aug == "gpu":
        batch = default_collate([transform(im) for im in images])  # loader side: a resize only

        def make_views():
            return batch  # augmented on the device inside train_step
    else:
        def make_views():
            return default_collate([transform(im) for im in images])

    def step() -> torch.Tensor:
        trainer.train_step(make_views(), 0, it[0])
        it[0] += 1
        return trainer.dino.loss.last_stats["loss"]

    return step, reference_loss("ours", args.out_dim), (trainer.dino.student, trainer.dino.teacher)


def lightly_step(model: str, preset: dict, images: list, args: argparse.Namespace):
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms.dino_transform import DINOTransform
    from torch import nn
    from torch.utils.data import default_collate

    from container_ssl.models import create_backbone

    family = "deit" if model.startswith("deit") else "container"
    device = torch.device(args.device)
    def make() -> nn.Module:
        backbone = create_backbone(model, img_size=preset["global_size"], patch_size=preset["patch"][family])
        head = DINOProjectionHead(backbone.num_features, 2048, 256, args.out_dim, freeze_last_layer=1)
        return nn.Sequential(backbone, head).to(device)

    student, teacher = make(), make()  # lightly's head uses the old weight_norm, which cannot be deep-copied
    teacher.load_state_dict(student.state_dict())
    deactivate_requires_grad(teacher)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    student.to(memory_format=fmt)
    teacher.to(memory_format=fmt)
    criterion = DINOLoss(output_dim=args.out_dim, warmup_teacher_temp_epochs=30).to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.04)
    transform = DINOTransform(global_crop_size=preset["global_size"], local_crop_size=preset["local_size"],
                              n_local_views=preset["n_local"])
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp == "bf16" else \
        (lambda: torch.autocast(device.type, enabled=False))

    def step() -> torch.Tensor:
        views = default_collate([transform(im) for im in images])
        views = [v.to(device, non_blocking=True).contiguous(memory_format=fmt) for v in views]
        update_momentum(student, teacher, m=0.996)
        with autocast():
            teacher_out = [teacher(v) for v in views[:2]]
            student_out = [student(v) for v in views]
            loss = criterion([t.float() for t in teacher_out], [s.float() for s in student_out], epoch=0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        student[1].cancel_last_layer_gradients(current_epoch=0)
        optimizer.step()
        return loss.detach()

    return step, reference_loss("lightly", args.out_dim), (student, teacher)


def reference_loss(impl: str, out_dim: int, ncrops: int = 4, batch: int = 8) -> float:
    """Each implementation's DINO loss on the same fixed student/teacher outputs (epoch 0, fresh centre)."""
    g = torch.Generator().manual_seed(1)
    student = torch.randn(ncrops, batch, out_dim, generator=g)
    teacher = torch.randn(2, batch, out_dim, generator=g)
    if impl == "ours":
        from container_ssl.ssl.loss import DINOLoss

        fn = DINOLoss(out_dim, ncrops)
        return float(fn(student.reshape(-1, out_dim), teacher.reshape(-1, out_dim), 0.04))
    from lightly.loss import DINOLoss as LightlyDINOLoss

    fn = LightlyDINOLoss(output_dim=out_dim, warmup_teacher_temp=0.04, teacher_temp=0.04)
    return float(fn(list(teacher), list(student), epoch=0))


if __name__ == "__main__":
    main()
