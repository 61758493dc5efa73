"""Real two-process DDP on CPU (gloo), launched like ``torchrun`` (MASTER_ADDR/PORT, RANK, WORLD_SIZE,
LOCAL_RANK in the environment), through ``ssmix.engine.ddp.init_distributed``.

Importing torch + ssmix dominates the cost, so both ranks are started once (module fixture) and each
runs every scenario in one process group, saving what it observed under ``tmp/rank<r>/``; the tests
below only read those files. A rank that fails makes the fixture kill the other one at once (it would
wait in a collective); a hang is killed after ``TIMEOUT_S``; either fails with both ranks' logs
instead of blocking CI.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = 2
TIMEOUT_S = 240
PER_RANK_BATCH = 4
QUEUE = 24  # a multiple of the global batch 8, not of 16: after 4 steps ptr is 8 (8 keys/step), not 16 (4)
STEPS = 4

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)


# -- what every rank runs -------------------------------------------------------------------------
def _train_overrides(out_dir: str, *extra: str):
    # 24 images / 2 ranks / batch 4 = 3 steps per epoch: the resume at step 2 crosses an epoch end.
    # Mixup draws lambda and the partner order from each rank's own RNG stream, so rank 1's stream
    # reaches the averaged gradients: an exact resume needs every rank's RNG state in the checkpoint.
    return [
        "method.name=mocov2",
        "mix.type=mixup",
        f"method.queue_size={QUEUE}",
        "method.momentum=0.9",
        "method.bn_splits=2",
        f"train.batch_size={PER_RANK_BATCH}",
        "data.num_samples=24",
        f"output_dir={out_dir}",
        *extra,
    ]


def _ddp_step_config(*extra: str):
    from tests.helpers import tiny_config

    # SimSiam has no queue, no momentum branch and no cross-sample term in its loss: the full-batch loss
    # is the mean of the per-rank losses, so with global BN statistics the steps must agree.
    return tiny_config("method.name=simsiam", "data.aug.kind=simsiam", *extra)


def _scenario_ddp_step(rank: int, out: str) -> None:
    """One DDP step (SyncBN, float64) on this rank's half of 8 images vs one plain step on all 8."""
    from ssmix.engine.ddp import wrap_for_training
    from ssmix.engine.pretrainer import Pretrainer

    cfg = _ddp_step_config("model.sync_bn=true")
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(Pretrainer(cfg, 32, 10).double().train())
    reference, model = models
    torch.manual_seed(1)  # the same global batch on both ranks
    views = [torch.randn(2 * PER_RANK_BATCH, 3, 16, 16, dtype=torch.float64) for _ in range(2)]
    labels, index = torch.zeros(2 * PER_RANK_BATCH, dtype=torch.long), torch.arange(2 * PER_RANK_BATCH)
    losses, _ = reference.training_step(views, labels, index, 0, 10, 5)
    sum(losses.values()).backward()
    step = wrap_for_training(model, cfg.model.sync_bn, False, "cpu")
    part = slice(rank * PER_RANK_BATCH, (rank + 1) * PER_RANK_BATCH)
    losses, _ = step([v[part] for v in views], labels[part], index[part], 0, 10, 5)
    sum(losses.values()).backward()
    torch.save(
        {
            "type": type(step).__name__,
            "norms": sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}),
            "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
            "ref_grads": {n: p.grad.clone() for n, p in reference.named_parameters() if p.grad is not None},
            "buffers": {n: b.clone() for n, b in model.named_buffers()},
            "ref_buffers": {n: b.clone() for n, b in reference.named_buffers()},
        },
        os.path.join(out, "ddp_step.pt"),
    )


def _scenario_shuffle(rank: int, out: str) -> None:
    from ssmix.methods import build_method
    from ssmix.methods.base import l2n
    from tests.helpers import moco_overrides, tiny_config

    torch.manual_seed(0)  # the same weights on both ranks
    method = build_method(tiny_config(*moco_overrides()))
    for m in method.modules():  # non-trivial running statistics, so eval-mode BN is not ~identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    method.eval()
    seen = []
    method.backbone_m.conv1.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    torch.manual_seed(100 + rank)
    x = torch.randn(2 * PER_RANK_BATCH, 3, 16, 16)  # (view 1, view 2) of this rank's half batch
    keys, _ = method._keys(x, None)
    keys_map, maps = method._keys(x, 3)
    with torch.no_grad():
        expected = l2n(method.projector_m(method.backbone_m(x)))
        expected_maps = method.backbone_m.run(x, 0, 3)
    torch.save(
        {
            "x": x,
            "keys": keys,
            "keys_map": keys_map,
            "maps": maps,
            "expected": expected,
            "expected_maps": expected_maps,
            "seen": seen[0],
            "bn_types": sorted({type(m).__name__ for m in method.modules() if "Norm" in type(m).__name__}),
        },
        os.path.join(out, "shuffle.pt"),
    )


def _capturing_pretrainer(captured: dict):
    """``trainer.Pretrainer`` stand-in that keeps the live model and its last enqueued keys."""
    from ssmix.engine.pretrainer import Pretrainer

    def build(*args, **kwargs):
        model = Pretrainer(*args, **kwargs)
        enqueue = model.method.on_step_end

        def on_step_end(out):
            captured["keys"] = out.keys[1].detach().clone()
            captured["ptr_before"] = int(model.method.queue.ptr)
            enqueue(out)

        model.method.on_step_end = on_step_end
        captured["model"] = model
        return model

    return build


def _recording_wrap(captured: dict):
    from ssmix.engine.ddp import wrap_for_training

    def wrap(*args, **kwargs):
        step = wrap_for_training(*args, **kwargs)
        captured["step_type"] = type(step).__name__
        return step

    return wrap


def _scenario_train(rank: int, out: str, shared: str) -> None:
    from ssmix.engine import trainer
    from tests.helpers import tiny_config

    runs = {
        "full": [f"train.max_steps={STEPS}"],
        "part": ["train.max_steps=2"],
        "resumed": [f"train.max_steps={STEPS}", "resume=auto"],
    }
    for name, extra in runs.items():
        captured = {}
        trainer.Pretrainer = _capturing_pretrainer(captured)
        trainer.wrap_for_training = _recording_wrap(captured)
        run_dir = os.path.join(shared, "resume" if name != "full" else "full")
        summary = trainer.train(tiny_config(*_train_overrides(run_dir, *extra)))
        model = captured["model"]
        torch.save(
            {
                "summary": summary,
                "state": {k: v.clone() for k, v in model.state_dict().items()},
                "step_type": captured["step_type"],
                "keys": captured["keys"],
                "ptr_before": captured["ptr_before"],
                "bn_splits": sorted(
                    {
                        getattr(m, "num_splits", 1)
                        for m in model.modules()
                        if isinstance(m, torch.nn.BatchNorm2d)
                    }
                ),
            },
            os.path.join(out, f"train_{name}.pt"),
        )


def _scenario_sync_bn_train(rank: int, out: str, shared: str) -> None:
    from ssmix.engine import trainer
    from ssmix.engine.pretrainer import Pretrainer
    from tests.helpers import tiny_config

    captured = {}
    trainer.Pretrainer = lambda *args, **kwargs: captured.setdefault("model", Pretrainer(*args, **kwargs))
    cfg = tiny_config(
        "method.name=byol",
        "model.sync_bn=true",
        "data.num_samples=24",
        f"train.batch_size={PER_RANK_BATCH}",
        "train.max_steps=2",
        f"output_dir={os.path.join(shared, 'sync_bn')}",
    )
    summary = trainer.train(cfg)
    model = captured["model"]
    torch.save(
        {
            "summary": summary,
            "state": {k: v.clone() for k, v in model.state_dict().items()},
            "norms": sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}),
        },
        os.path.join(out, "sync_bn.pt"),
    )


def _scenario_swav_samix_c(rank: int, out: str, shared: str) -> None:
    """SwAV + SAMix-C under DDP: prototypes frozen (unused) in epoch 0, trained from step 3 on; the
    Mixer, the cluster head and the host-resident ODC memory in the same DDP module."""
    from ssmix.engine import trainer
    from ssmix.engine.pretrainer import Pretrainer
    from tests.helpers import tiny_config

    captured = {}
    trainer.Pretrainer = lambda *args, **kwargs: captured.setdefault("model", Pretrainer(*args, **kwargs))
    cfg = tiny_config(
        "method.name=swav",
        "data.aug.kind=swav",
        "data.aug.multi_crop.sizes=[16,8]",
        "method.num_prototypes=16",
        "method.queue_size=0",
        "mix.type=samix_c",
        "mix.mixer_warmup_epochs=0",
        "mix.odc.num_clusters=4",
        "mix.odc.min_cluster=4",
        "data.num_samples=24",
        f"train.batch_size={PER_RANK_BATCH}",
        "train.max_steps=4",
        f"output_dir={os.path.join(shared, 'swav_samix_c')}",
    )
    summary = trainer.train(cfg)
    torch.save(
        {"summary": summary, "state": {k: v.clone() for k, v in captured["model"].state_dict().items()}},
        os.path.join(out, "swav_samix_c.pt"),
    )


def _worker(shared: str) -> None:
    """Entry point of one rank (environment as torchrun sets it)."""
    torch.set_num_threads(1)
    from ssmix.engine.ddp import init_distributed

    rank, world, _ = init_distributed("cpu")
    assert world == WORLD, world
    out = os.path.join(shared, f"rank{rank}")
    os.makedirs(out, exist_ok=True)
    try:
        _scenario_ddp_step(rank, out)
        _scenario_shuffle(rank, out)
        _scenario_train(rank, out, shared)
        _scenario_sync_bn_train(rank, out, shared)
        _scenario_swav_samix_c(rank, out, shared)
    finally:
        dist.destroy_process_group()


# -- the launcher -----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run both ranks once; returns the shared directory holding ``rank<r>/`` results."""
    shared = str(tmp_path_factory.mktemp("ddp"))
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "LOCAL_RANK": str(rank),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        }
        log = open(os.path.join(shared, f"log{rank}.txt"), "w", encoding="utf-8")
        code = f"from tests.test_distributed import _worker; _worker({shared!r})"
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                ),
                log,
            )
        )
    failed = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(proc.poll() is None for proc, _ in procs):
            codes = [proc.poll() for proc, _ in procs]
            if any(code not in (None, 0) for code in codes):  # the other rank would wait in a collective
                break
            if time.monotonic() > deadline:
                failed.append(f"still running after {TIMEOUT_S} s (a collective hung?)")
                break
            time.sleep(0.2)
        failed += [
            f"rank {r} exited with {proc.returncode}"
            for r, (proc, _) in enumerate(procs)
            if proc.poll() not in (None, 0)
        ]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    if failed:
        logs = "\n".join(
            f"--- rank {r} ---\n" + open(os.path.join(shared, f"log{r}.txt")).read()[-3000:]
            for r in range(WORLD)
        )
        pytest.fail("; ".join(failed) + "\n" + logs)
    return shared


def _load(shared: str, rank: int, name: str):
    return torch.load(os.path.join(shared, f"rank{rank}", name), weights_only=False)


def _latest_checkpoint(run_dir: str):
    from ssmix.engine import checkpoint as ckpt

    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))


# -- the tests --------------------------------------------------------------------------------------
def test_ddp_step_equals_the_single_process_step_on_the_full_batch(ranks):
    r = [_load(ranks, k, "ddp_step.pt") for k in range(WORLD)]
    assert r[0]["type"] == "DistributedDataParallel"
    assert r[0]["norms"] == ["CPUSyncBatchNorm"]
    assert set(r[0]["grads"]) == set(r[0]["ref_grads"]) and len(r[0]["grads"]) > 10
    for name, expected in r[0]["ref_grads"].items():
        for k in range(WORLD):  # DDP's averaged gradient = the full-batch gradient, on every rank
            torch.testing.assert_close(r[k]["grads"][name], expected, rtol=1e-9, atol=1e-12, msg=name)
    for name, expected in r[0]["ref_buffers"].items():  # SyncBN running statistics = full-batch ones
        for k in range(WORLD):
            torch.testing.assert_close(r[k]["buffers"][name], expected, rtol=1e-9, atol=1e-12, msg=name)


def test_sync_bn_training_run_keeps_global_statistics_on_every_rank(ranks):
    r = [_load(ranks, k, "sync_bn.pt") for k in range(WORLD)]
    assert r[0]["summary"]["step"] == 2 and r[0]["norms"] == ["CPUSyncBatchNorm"]
    running = [k for k in r[0]["state"] if k.endswith("running_mean")]
    assert running
    for key, value in r[0]["state"].items():  # parameters, EMA target and BN statistics: all equal
        assert torch.equal(r[1]["state"][key], value), key
    assert any(v.abs().sum() > 0 for k, v in r[0]["state"].items() if k.endswith("running_mean"))


def test_swav_with_frozen_prototypes_and_samix_c_trains_under_ddp(ranks):
    r = [_load(ranks, k, "swav_samix_c.pt") for k in range(WORLD)]
    assert r[0]["summary"]["step"] == 4  # 3 steps with unused prototypes, then 1 with them
    state = r[0]["state"]
    assert {"mixing.odc.labels", "mixing.mixer.head.weight", "method.prototypes.weight"} <= set(state)
    for key, value in state.items():  # parameters, Mixer, cluster head and ODC memory agree
        if not key.endswith(("running_mean", "running_var")):
            assert torch.equal(r[1]["state"][key], value), key


def test_cross_rank_shuffle_returns_keys_in_the_original_order(ranks):
    r = [_load(ranks, k, "shuffle.pt") for k in range(WORLD)]
    assert r[0]["bn_types"] == ["BatchNorm2d"]  # bn_splits forced to 1 under DDP
    for k in range(WORLD):
        torch.testing.assert_close(r[k]["keys"], r[k]["expected"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r[k]["keys_map"], r[k]["expected"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r[k]["maps"], r[k]["expected_maps"], rtol=1e-4, atol=1e-5)
    # The key encoder saw a permutation of the global batch, with images of the other rank.
    global_batch = torch.cat([r[k]["x"] for k in range(WORLD)]).flatten(1)
    seen = torch.cat([r[k]["seen"] for k in range(WORLD)]).flatten(1)
    match = (seen[:, None, :] == global_batch[None, :, :]).all(-1)  # (seen row, global row)
    assert torch.equal(match.sum(0), torch.ones(len(global_batch), dtype=torch.long))
    source_rank = match.float().argmax(1) // (2 * PER_RANK_BATCH)
    assert (source_rank.view(WORLD, -1) != torch.arange(WORLD)[:, None]).any(1).all()


def test_two_rank_training_keeps_ranks_identical_and_gathers_keys(ranks):
    r = [_load(ranks, k, "train_full.pt") for k in range(WORLD)]
    assert r[0]["summary"]["step"] == STEPS and r[0]["bn_splits"] == [1]
    assert r[0]["step_type"] == r[1]["step_type"] == "DistributedDataParallel"  # method + mixer in one DDP
    saved = _latest_checkpoint(os.path.join(ranks, "full"))
    assert saved["step"] == STEPS and isinstance(saved["rng"], list) and len(saved["rng"]) == WORLD
    running = ("running_mean", "running_var")  # BN statistics are per rank (batch statistics differ)
    for key, value in saved["model"].items():
        for k in range(WORLD):
            if k == 0 or not key.endswith(running):
                assert torch.equal(r[k]["state"][key], value), (k, key)
    assert any(not torch.equal(r[1]["state"][k], v) for k, v in saved["model"].items() if k.endswith(running))
    # The global batch (8 keys, rank 0's then rank 1's) is enqueued once per step.
    queue_ptr = saved["model"]["method.queue.ptr"]
    assert int(queue_ptr) == (STEPS * PER_RANK_BATCH * WORLD) % QUEUE
    start = r[0]["ptr_before"]
    assert r[1]["ptr_before"] == start
    last = saved["model"]["method.queue.keys"][start : start + PER_RANK_BATCH * WORLD]
    assert torch.equal(last, torch.cat([r[0]["keys"], r[1]["keys"]]))
    assert not torch.allclose(r[0]["keys"], r[1]["keys"])  # the ranks saw different images


def test_ddp_resume_is_exact(ranks):
    part = [_load(ranks, k, "train_part.pt") for k in range(WORLD)]
    resumed = [_load(ranks, k, "train_resumed.pt") for k in range(WORLD)]
    assert part[0]["summary"]["step"] == 2 and resumed[0]["summary"]["step"] == STEPS
    full = _latest_checkpoint(os.path.join(ranks, "full"))
    after = _latest_checkpoint(os.path.join(ranks, "resume"))
    assert after["step"] == full["step"] == STEPS
    for key, value in full["model"].items():
        assert torch.equal(value, after["model"][key]), key
    for k, st in full["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], after["optimizer"]["state"][k]["momentum_buffer"])
    # Rank 1 continued exactly too: its last keys match the uninterrupted run's.
    full_keys = _load(ranks, 1, "train_full.pt")["keys"]
    assert torch.equal(resumed[1]["keys"], full_keys)


# -- a rank that fails ------------------------------------------------------------------------------
FAIL_BOUND_S = 60


def test_a_failing_rank_ends_the_whole_job_non_zero(tmp_path):
    """Both ranks launched as SLURM's srun would (no torchrun agent to kill the survivor): rank 1 meets a
    corrupt image in its second batch; it exits with its one-line error, rank 0 (waiting in DDP's
    gradient all-reduce) fails within the bound instead of hanging."""
    import numpy as np
    from PIL import Image

    from ssmix.data.loader import EpochSampler
    from tests.helpers import TINY

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
    paths = sorted(str(p) for p in images.iterdir())
    second_batch_of_rank1 = EpochSampler(16, seed=0, epoch=0, rank=1, world_size=WORLD)._shard()[4:8]
    bad = paths[second_batch_of_rank1[0]]
    with open(bad, "wb") as f:
        f.write(b"not a png")
    port = _free_port()
    procs, logs = [], []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "LOCAL_RANK": str(rank),
            "OMP_NUM_THREADS": "1",
            "SSMIX_DIST_TIMEOUT_S": "30",
            "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        }
        logs.append(tmp_path / f"log{rank}.txt")
        cmd = [
            sys.executable,
            "-m",
            "ssmix.pretrain",
            os.path.join(ROOT, "configs", "synthetic", "simsiam.yaml"),
            *TINY,
            "data.name=folder",
            f"data.root={images}",
            "seed=0",
            "train.batch_size=4",
            "train.max_steps=3",
            f"output_dir={tmp_path / 'run'}",
        ]
        procs.append(
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT)
        )
    ended = {}
    start = time.monotonic()
    try:
        while len(ended) < WORLD and time.monotonic() - start < TIMEOUT_S:
            for rank, proc in enumerate(procs):
                if rank not in ended and proc.poll() is not None:
                    ended[rank] = time.monotonic()
            time.sleep(0.1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = [log.read_text() for log in logs]
    assert set(ended) == {0, 1}, f"a rank was still running after {TIMEOUT_S} s:\n" + "\n".join(
        t[-2000:] for t in text
    )
    assert procs[1].returncode == 2 and f"error: {bad}: not a readable image (" in text[1]
    assert procs[0].returncode != 0, text[0][-2000:]
    assert ended[0] - ended[1] < FAIL_BOUND_S  # the survivor did not wait for the default timeout
    assert not os.path.exists(tmp_path / "run" / "backbone.pth")


def test_sync_bn_is_refused_for_moco_and_a_no_op_on_one_process():
    from ssmix.config import ConfigError
    from ssmix.engine.ddp import wrap_for_training

    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    with pytest.raises(ConfigError, match="^model.sync_bn: MoCo v2 normalises its keys with shuffle-BN"):
        wrap_for_training(model, True, True, "cpu")
    assert wrap_for_training(model, True, False, "cpu") is model and type(model[0]) is torch.nn.BatchNorm2d
