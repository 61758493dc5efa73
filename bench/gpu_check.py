"""The GPU check in one command (``make gpu-check``): one table, under 8 minutes on one GPU, nothing
downloaded (synthetic tensors and images, generated JPEGs).

Rows (a row that cannot run says ``skipped: <why>``; one that fails says ``FAILED: ...`` and the script
exits 1):

- ``cuda tests``: ``pytest -m cuda tests`` (bf16 / fp16 steps of every method with SAMix-C and the
  GradScaler through a resume, channels_last, faiss GPU k-means, a one-rank NCCL group);
- ``img/s``: ssmix MoCo v2, the torch + lightly reference step and MoCo v2 + SAMix-C, at ResNet-18 32 px
  (batch 256) and ResNet-50 224 px (batch 64), bf16 and fp16, each with its peak GPU memory; and MoCo v2
  in NCHW (``model.channels_last=false``: its 8-split BN then needs no NHWC <-> NCHW copy per layer);
- ``loader``: the pre-training loader's img/s on generated 500x375 JPEGs (two 224 px MoCo v2 views), to
  set beside the R50 step's: the smaller bounds the run;
- ``host syncs``: per MoCo v2 + SAMix-C step, by ``ssmix.engine.syncs.HostSyncCounter`` (reads of device
  values, blocking copies) and, on CUDA, by ``torch.cuda.set_sync_debug_mode``;
- ``resume``: 3 + 3 steps against 6 through ``trainer.train`` (MoCo v2 + SAMix-C), compared exactly;
- ``probe``: linear probe and kNN (``ssmix.evaluation.evaluate``) of that run's backbone;
- ``faiss k-means``: 100k x 128 -> 200 clusters on the GPU, where faiss has GPU support.

    python bench/gpu_check.py                      # a CUDA machine (make gpu-check sets up .venv-gpu)
    python bench/gpu_check.py --device cpu --tiny  # the CPU rows at toy sizes (tests/test_gpu_check.py)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS for the resume row

import torch  # noqa: E402

SETTINGS = {"r18": ("resnet18", 32, 256), "r50": ("resnet50", 224, 64)}
TINY = {"r18": ("resnet18", 16, 16)}
SAMIX_C = ["mix.type=samix_c", "mix.mixer_warmup_epochs=0"]


@dataclass
class Row:
    check: str
    setting: str
    result: str
    note: str = ""


def _skip(check: str, setting: str, why: str) -> Row:
    return Row(check, setting, f"skipped: {why}")


def guarded(check: str, fn: Callable[[], List[Row]], setting: str = "-") -> List[Row]:
    """``fn``'s rows; a missing package is a skipped row naming it, any other error a FAILED row."""
    try:
        return fn()
    except ImportError as exc:
        package = (exc.name or str(exc)).split(".")[0]
        return [_skip(check, setting, f"{package} is not installed")]
    except Exception as exc:  # noqa: BLE001 - the table reports it and the script exits 1
        return [Row(check, setting, f"FAILED: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}")]


# ----------------------------------------------------------------------------------------- the rows
def cuda_tests(args) -> List[Row]:
    if not args.device.startswith("cuda"):
        return [_skip("cuda tests", "pytest -m cuda", "no CUDA device")]
    start = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-m",
        "cuda",
        "-p",
        "no:cacheprovider",
        os.path.join(ROOT, "tests", "test_cuda.py"),
    ]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.tests_timeout)
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    result = summary if proc.returncode == 0 else f"FAILED: {summary}"
    return [Row("cuda tests", "pytest -m cuda", result, f"{time.perf_counter() - start:.0f} s")]


def _peak_gib(device: str) -> str:
    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.startswith("cuda") else "-"


def _time_step(step: Callable, size: int, batch: int, args) -> Dict[str, float]:
    device = args.device
    views = [[torch.randn(batch, 3, size, size, device=device) for _ in range(2)] for _ in range(2)]
    for i in range(args.warmup):
        step(views[i % 2], i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(views[i % 2], i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"img_s": args.steps * batch / (time.perf_counter() - start)}


def throughput(args) -> List[Row]:
    """img/s and peak memory of the three steps for every setting and precision."""
    from gpu_throughput import reference, ssmix_step

    rows, total = [], args.warmup + args.steps + 1
    small = dict(odc_samples=512, queue=64) if args.tiny else {}
    for key, (arch, size, batch) in (TINY if args.tiny else SETTINGS).items():
        for amp in ("bf16", "fp16"):
            setting = f"{arch} {size}px b{batch} {amp}"
            if amp == "fp16" and not args.device.startswith("cuda"):
                rows.append(_skip("img/s", setting, "fp16 needs CUDA"))
                continue
            dtype = torch.bfloat16 if amp == "bf16" else torch.float16
            steps = {
                "ssmix mocov2": lambda: ssmix_step(arch, size, batch, [], total, args.device, amp, **small),
                "torch+lightly ref": lambda: reference(
                    arch, size, batch, total, args.device, dtype, small.get("queue", 16384)
                ),
                "ssmix +samix_c": lambda: ssmix_step(
                    arch, size, batch, SAMIX_C, total, args.device, amp, **small
                ),
                # split BN copies NHWC <-> NCHW at every layer: is channels_last still the faster?
                "ssmix mocov2 nchw": lambda: ssmix_step(
                    arch, size, batch, ["model.channels_last=false"], total, args.device, amp, **small
                ),
            }
            for name, build in steps.items():
                rows += guarded(
                    "img/s", lambda: [_measure(name, build, setting, size, batch, args)], f"{setting}: {name}"
                )
    if args.tiny:
        rows.append(_skip("img/s", "resnet50 224px b64", "--tiny"))
    return rows


def _measure(name: str, build: Callable, setting: str, size: int, batch: int, args) -> Row:
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rate = _time_step(build(), size, batch, args)["img_s"]
    return Row("img/s", f"{setting}: {name}", f"{rate:.0f} img/s", f"peak {_peak_gib(args.device)}")


def loader(args) -> List[Row]:
    from loader_throughput import generate_jpegs, loader_rate

    count, size, batch = (32, 32, 8) if args.tiny else (args.jpegs, 224, 64)
    workers = 0 if args.tiny else args.workers
    with tempfile.TemporaryDirectory() as tmp:
        generate_jpegs(tmp, count, 64 if args.tiny else 500, 48 if args.tiny else 375)
        rate = loader_rate(tmp, size, batch, workers, count // batch, args.device.startswith("cuda"))
    return [
        Row(
            "loader",
            f"{count} JPEGs, 2 x {size}px views, {workers} workers",
            f"{rate:.0f} img/s",
            "compare with the R50 img/s rows: the smaller bounds the run",
        )
    ]


def host_syncs(args) -> List[Row]:
    """Host waits of the third MoCo v2 + SAMix-C step, as the trainer's loop runs it: the loader batch
    copied to the device, then the trainer's step (:class:`ssmix.engine.step.OptimStep`)."""
    from ssmix.config import load_config
    from ssmix.device import autocast_dtype
    from ssmix.engine.optim import build_optimizer
    from ssmix.engine.pretrainer import Pretrainer
    from ssmix.engine.step import OptimStep
    from ssmix.engine.syncs import HostSyncCounter
    from ssmix.engine.trainer import batch_to_device

    device, cuda, n = args.device, args.device.startswith("cuda"), 64
    cfg = load_config(
        None,
        [
            f"device={device}",
            "model.arch=resnet18",
            "data.image_size=16",
            "train.batch_size=16",
            "method.queue_size=64",
            "method.bn_splits=2",
            *SAMIX_C,
            "mix.odc.num_clusters=4",
            "mix.odc.min_cluster=4",
        ],
    )
    model = Pretrainer(cfg, n, 0).to(device).train()
    model.on_train_start(lambda: (torch.randn(n, model.method.embed_dim), torch.zeros(n, dtype=torch.long)))
    optim_step = OptimStep(
        model,
        build_optimizer(model.param_groups(), cfg, 4),
        device,
        autocast_dtype(cfg.train.amp, device),
        cfg.train.grad_clip,
    )

    def step(i: int) -> None:
        host = (
            [torch.randn(16, 3, 16, 16) for _ in range(2)],
            torch.zeros(16, dtype=torch.long),
            torch.randperm(n)[:16],
        )
        if cuda:  # the loader pins its batches on CUDA
            host = [v.pin_memory() for v in host[0]], host[1].pin_memory(), host[2].pin_memory()
        views, labels, index = batch_to_device(*host, device, torch.contiguous_format)
        optim_step(views, labels, index, i, 10, 4)  # 4 steps per epoch, as the optimizer's

    for i in range(2):
        step(i)
    with HostSyncCounter(emulate=not cuda) as counter, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            step(2)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    debug = f"; cuda sync debug mode: {sum('synchroniz' in str(w.message) for w in caught)}" if cuda else ""
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(counter.counts.items())) or "none"
    return [
        Row(
            "host syncs",
            "mocov2+samix_c step (trainer loop body)",
            f"{counter.total} ({kinds}){debug}",
            "ODC's host memory: index and keys copied to the host once each",
        )
    ]


def _train_config(args, out: str, *extra: str):
    from ssmix.config import load_config

    amp = "bf16" if args.device.startswith("cuda") else "off"
    return load_config(
        os.path.join(ROOT, "configs", "synthetic", "mocov2.yaml"),
        [
            f"device={args.device}",
            "data.image_size=16",
            "data.num_samples=64",
            "data.num_workers=0",
            "model.arch=resnet18",
            "train.batch_size=16",
            "train.epochs=2",
            "train.progress=false",
            f"train.amp={amp}",
            "train.log_every=1",
            "deterministic=true",
            "method.queue_size=64",
            "method.bn_splits=2",
            *SAMIX_C,
            "mix.odc.num_clusters=4",
            "mix.odc.min_cluster=4",
            f"output_dir={out}",
            *extra,
        ],
    )


def resume_and_probe(args) -> List[Row]:
    from ssmix.engine import checkpoint as ckpt
    from ssmix.engine.trainer import train
    from ssmix.evaluation import evaluate

    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        full, part = os.path.join(tmp, "full"), os.path.join(tmp, "part")
        train(_train_config(args, full, "train.max_steps=6"))
        train(_train_config(args, part, "train.max_steps=3"))
        train(_train_config(args, part, "train.max_steps=6", "resume=auto"))
        a = ckpt.load_checkpoint(ckpt.latest_checkpoint(full))["model"]
        b = ckpt.load_checkpoint(ckpt.latest_checkpoint(part))["model"]
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        worst = max((float((a[k].float() - b[k].float()).abs().max()) for k in differ), default=0.0)
        result = "bit-exact" if not differ else f"{len(differ)} of {len(a)} tensors differ (max {worst:.2g})"
        rows.append(Row("resume", "3 + 3 vs 6 steps, mocov2+samix_c", result))
        start = time.perf_counter()
        res = evaluate(
            full,
            {"name": "synthetic", "num_samples": 128, "image_size": 16, "num_workers": 0},
            epochs=2 if args.tiny else 20,
            device=args.device,
            cache_dir=None,
            knn_k=20,
            batch_size=64,
        )
        accuracy = f"top1 {res['top1']:.1f}, kNN {res['knn_top1']:.1f}"
        rows.append(Row("probe", "linear + kNN, synthetic", accuracy, f"{time.perf_counter() - start:.1f} s"))
    return rows


def faiss_kmeans(args) -> List[Row]:
    import faiss

    from ssmix.clustering.kmeans import kmeans

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if args.device.startswith("cuda") and gpus == 0:
        return [_skip("faiss k-means", "GPU", "faiss has no GPU support (make gpu-setup installs faiss-gpu)")]
    n, d, k = (2000, 32, 10) if args.tiny else (100_000, 128, 200)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    _, labels = kmeans(x, k, iters=20, seed=0)
    where = f"{gpus} GPU(s) visible to faiss" if gpus else "faiss on CPU"
    return [
        Row(
            "faiss k-means",
            f"{n} x {d} -> {k}",
            f"{time.perf_counter() - start:.2f} s",
            f"{where}; {int(labels.unique().numel())} clusters",
        )
    ]


# ------------------------------------------------------------------------------------------ the table
def table(rows: List[Row]) -> str:
    cells = [("check", "setting", "result", "note")] + [(r.check, r.setting, r.result, r.note) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = [" | ".join(c[i].ljust(widths[i]) for i in range(4)).rstrip() for c in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args) -> List[Row]:
    torch.backends.cudnn.benchmark = args.device.startswith("cuda")
    rows = guarded("cuda tests", lambda: cuda_tests(args))
    rows += guarded("img/s", lambda: throughput(args))
    rows += guarded("loader", lambda: loader(args))
    rows += guarded("host syncs", lambda: host_syncs(args))
    rows += guarded("resume", lambda: resume_and_probe(args))
    rows += guarded("faiss k-means", lambda: faiss_kmeans(args), "k-means")
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the CPU-expressible rows)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (CI): R18 16 px batch 16, 32 JPEGs")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per img/s row")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--jpegs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--tests-timeout", type=int, default=300)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here; `python bench/gpu_check.py --device cpu --tiny` runs the CPU "
            "rows"
        )
        return 2
    start = time.perf_counter()
    rows = run(args)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"ssmix gpu check on {name} (torch {torch.__version__}), {time.perf_counter() - start:.0f} s")
    print(table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)
    return 1 if any(r.result.startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
