"""``bench/gpu_check.py`` (``make gpu-check``) on CPU at toy sizes: the rows that CPU can express run and
report numbers, the rest say why they were skipped, and a machine without lightly or faiss still gets
its table."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import gpu_check

    return gpu_check


def test_the_cpu_rows_of_the_gpu_check_run_and_the_others_say_why_not(gpu_check, tmp_path, capsys):
    out = tmp_path / "rows.json"
    code = gpu_check.main(["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "1", "--json", str(out)])
    table = capsys.readouterr().out
    rows = {(r["check"], r["setting"]): r for r in json.loads(out.read_text())}
    assert code == 0, table
    lines = table.splitlines()  # the run's own [ssmix] phase lines come first, then the table
    header = next(i for i, line in enumerate(lines) if line.startswith("ssmix gpu check on "))
    assert lines[header + 1].startswith("check ") and "| result" in lines[header + 1]
    assert rows[("cuda tests", "pytest -m cuda")]["result"] == "skipped: no CUDA device"
    for name in ("ssmix mocov2", "torch+lightly ref", "ssmix +samix_c", "ssmix mocov2 nchw"):
        assert re.fullmatch(r"\d+ img/s", rows[("img/s", f"resnet18 16px b16 bf16: {name}")]["result"]), name
    assert rows[("img/s", "resnet18 16px b16 fp16")]["result"] == "skipped: fp16 needs CUDA"
    assert re.fullmatch(r"\d+ img/s", rows[("loader", "32 JPEGs, 2 x 32px views, 0 workers")]["result"])
    assert rows[("host syncs", "mocov2+samix_c step (trainer loop body)")]["result"] == "2 (copy 2)"
    assert rows[("resume", "3 + 3 vs 6 steps, mocov2+samix_c")]["result"] == "bit-exact"
    assert re.fullmatch(r"top1 [\d.]+, kNN [\d.]+", rows[("probe", "linear + kNN, synthetic")]["result"])
    faiss = [r["result"] for (check, _), r in rows.items() if check == "faiss k-means"]
    assert len(faiss) == 1 and (faiss[0] == "skipped: faiss is not installed" or faiss[0].endswith(" s"))


def test_without_lightly_and_faiss_the_rows_that_need_them_are_skipped(gpu_check, monkeypatch):
    for module in ("faiss", "lightly.loss", "lightly.models.batchnorm"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError naming the module
    args = gpu_check.parse_args(["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "1"])
    monkeypatch.setattr(gpu_check, "SAMIX_C", [])  # the row under test is the reference's; keep it short
    rows = gpu_check.guarded("img/s", lambda: gpu_check.throughput(args))
    rows += gpu_check.guarded("faiss k-means", lambda: gpu_check.faiss_kmeans(args), "k-means")
    results = {r.setting: r.result for r in rows}
    assert results["k-means"] == "skipped: faiss is not installed"
    assert results["resnet18 16px b16 bf16: torch+lightly ref"] == "skipped: lightly is not installed"
    assert re.fullmatch(r"\d+ img/s", results["resnet18 16px b16 bf16: ssmix mocov2"])  # ssmix itself runs
