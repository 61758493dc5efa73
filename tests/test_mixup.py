"""The method-mixer contract (ssmix.mixup) and the step that joins them: the pairing and its other-view
target rule, the lambda the step draws and passes to the mixer, methods built from their own config."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssmix.config import ModelConfig
from ssmix.engine.pretrainer import Pretrainer
from ssmix.methods import build_method
from ssmix.methods.simsiam import SimSiam, SimSiamConfig
from ssmix.mixers.handcrafted import InterIntraConfig, InterIntraMix
from ssmix.mixup import MixContext, MixedBatch, MixedInputs, Pairing, derangement, other_view, sample_beta
from tests.helpers import moco_overrides, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_pairing_sources_and_other_view_targets():
    per_view = torch.arange(2 * 5).view(2, 5)  # value = view * 5 + sample
    perm = torch.tensor([3, 4, 0, 1, 2])
    for view_b in (0, 1):
        pairing = Pairing(0, view_b, perm)
        a, b = pairing.sources(per_view)
        assert a.tolist() == list(range(5)) and b.tolist() == (view_b * 5 + perm).tolist()
        ta, tb = pairing.targets(per_view)
        assert ta.tolist() == [5 + i for i in range(5)]
        assert tb.tolist() == (other_view(view_b) * 5 + perm).tolist()
        ia, ib = pairing.target_index(5)
        assert torch.equal(per_view.flatten()[ia], ta) and torch.equal(per_view.flatten()[ib], tb)
    mixed = MixedBatch(MixedInputs(x=torch.zeros(5, 3), lam=torch.full((5,), 0.3)), Pairing(0, 1, perm))
    assert torch.equal(mixed.targets(per_view)[1], Pairing(0, 1, perm).targets(per_view)[1])
    assert mixed.start == 0 and torch.equal(mixed.lam, torch.full((5,), 0.3))


def test_pairing_draw_is_a_derangement_of_the_configured_views():
    torch.manual_seed(4)
    pairing = Pairing.draw(6, cross_view=False)
    torch.manual_seed(4)
    assert torch.equal(pairing.perm, derangement(6)) and (pairing.view_a, pairing.view_b) == (0, 0)
    assert Pairing.draw(6, cross_view=True).view_b == 1


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_the_step_draws_lambda_after_the_partners_and_passes_it_to_the_mixer(mix, monkeypatch):
    cfg = tiny_config(*moco_overrides(), f"mix.type={mix}")
    model = Pretrainer(cfg, 32, 10)
    mixer, seen = model.mixing.mixer, []
    forward = mixer.forward
    monkeypatch.setattr(
        mixer,
        "forward",
        lambda xa, xb, lam, ctx: seen.append((lam, ctx.pairing.perm)) or forward(xa, xb, lam, ctx),
    )
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    torch.manual_seed(11)
    _, metrics = model.training_step(views, torch.zeros(8), torch.arange(8), 0, 10, 5)
    ((lam, perm),) = seen
    # the same draws by hand: the method's forward (MoCo's shuffle-BN permutation), the partners, Beta(2, 2)
    torch.manual_seed(11)
    model.method(views, map_at=None)
    assert torch.equal(derangement(8), perm)
    assert lam == sample_beta(2.0)
    if mix == "mixup":
        assert float(metrics["mix_lam"]) == pytest.approx(lam)


def test_interintra_takes_its_two_lambdas_or_one_for_both():
    mixer = InterIntraMix(InterIntraConfig(labels="dataset"))
    torch.manual_seed(0)
    inter, intra = mixer.sample_lambda()
    torch.manual_seed(0)
    assert (inter, intra) == (sample_beta(2.0), sample_beta(0.2))
    n, h, w = 4, 8, 8
    labels = torch.tensor([0, 0, 1, 1])
    perm = torch.tensor([1, 0, 3, 2])  # every pair is same-label: Mixup at the intra lambda
    ctx = MixContext(
        views=[torch.ones(n, 3, h, w), torch.zeros(n, 3, h, w)],
        pairing=Pairing(0, 1, perm),
        keys=torch.zeros(2, n, 4),
        negatives=None,
        temperature=0.2,
        embed_target=None,
        online_prefix=None,
        labels=labels,
        num_classes=2,
    )
    out = mixer(torch.ones(n, 3, h, w), torch.zeros(n, 3, h, w), (0.9, 0.25), ctx)
    assert torch.allclose(out.lam, torch.full((n,), 0.25))
    out = mixer(torch.ones(n, 3, h, w), torch.zeros(n, 3, h, w), 0.6, ctx)
    assert torch.allclose(out.lam, torch.full((n,), 0.6))


def test_methods_get_their_own_config_and_state_group_options_as_keys():
    cfg = tiny_config(*moco_overrides())
    method = build_method(cfg)
    assert method.cfg is cfg.method
    # no train.* value
    simsiam = SimSiam(
        SimSiamConfig(proj_hidden_dim=16, out_dim=16, pred_hidden_dim=8),
        ModelConfig(arch="resnet18", cifar_stem=True),
    )
    predictor = [g for g in simsiam.param_groups() if g["name"] == "predictor"][0]
    assert predictor["fixed_lr"] is True and set(predictor) == {"name", "params", "fixed_lr"}


def test_a_config_without_registered_methods_says_what_to_import():
    code = (
        "from ssmix.config import ConfigError, load_config\n"
        "try:\n    load_config(None, ['method.name=byol'])\nexcept ConfigError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == (
        "method.name: unknown value 'byol' (nothing is registered: import ssmix.methods first)"
    ), out.stderr
