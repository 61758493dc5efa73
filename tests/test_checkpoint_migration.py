"""Checkpoints written before a rename still resume (issue 22): ``Pretrainer.pipeline`` became
``Pretrainer.mixing``, so a SAMix-C checkpoint of before holds ``pipeline.mixer.*`` / ``pipeline.odc.*``;
:func:`ssmix.engine.checkpoint.migrate_model_keys` renames them on load."""

import torch
from helpers import assert_same_checkpoint, checkpoint_steps, pretrain_argv

import ssmix.engine.checkpoint as ckpt
from ssmix import pretrain

SAMIX_C = [
    "mix.type=samix_c",
    "mix.mixer_warmup_epochs=0",
    "mix.odc.num_clusters=4",
    "mix.odc.min_cluster=4",
    "train.ckpt_every=2",
]


def _to_old_names(state):
    return {
        ("pipeline." + k[len("mixing.") :] if k.startswith("mixing.") else k): v for k, v in state.items()
    }


def test_migrate_model_keys_renames_only_the_old_prefix_and_keeps_the_order():
    state = {
        "method.backbone.w": 1,
        "pipeline.mixer.net.q": 2,
        "pipeline.odc.labels": 3,
        "method.pipeline.x": 4,
    }
    migrated = ckpt.migrate_model_keys(state)
    assert list(migrated) == [
        "method.backbone.w",
        "mixing.mixer.net.q",
        "mixing.odc.labels",
        "method.pipeline.x",
    ]
    assert list(migrated.values()) == [1, 2, 3, 4]


def test_a_checkpoint_with_the_old_key_names_resumes_bit_exactly(tmp_path):
    reference_dir, run = tmp_path / "reference", tmp_path / "run"
    assert pretrain.main(pretrain_argv(reference_dir, *SAMIX_C, "train.max_steps=4")) == 0
    reference = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(reference_dir)))
    assert any(k.startswith("mixing.odc.") for k in reference["model"])

    assert pretrain.main(pretrain_argv(run, *SAMIX_C, "train.max_steps=2")) == 0
    path = ckpt.latest_checkpoint(str(run))
    old = torch.load(path, weights_only=True)
    old["model"] = _to_old_names(old["model"])  # as a checkpoint of before the rename holds it
    assert not any(k.startswith("mixing.") for k in old["model"])
    assert any(k.startswith("pipeline.mixer.") for k in old["model"])
    torch.save(old, path)

    assert pretrain.main(pretrain_argv(run, *SAMIX_C, "train.max_steps=4", "resume=auto")) == 0
    assert checkpoint_steps(run) == [2, 4]
    assert_same_checkpoint(ckpt.load_checkpoint(ckpt.latest_checkpoint(str(run))), reference)
