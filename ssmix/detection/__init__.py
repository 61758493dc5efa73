"""Detection transfer of ssmix encoders (the MoCo protocol, docs/detection.md).

Two backends:

- embedded (default, any machine): ``ssmix-detect CONFIG [key=value ...]`` (or, in a source checkout,
  ``python -m detection.train``) on torchvision.models.detection set up as detectron2's R50-C4 / R-FPN
  (:mod:`ssmix.detection.engine`);
- detectron2 (optional, built from source): ``python -m ssmix.detection.convert`` then
  ``python -m ssmix.detection.train_net --config-file <file>.yaml MODEL.WEIGHTS <pkl>``.

The repository's top-level ``detection/`` keeps the presets, the detectron2 configs and thin
``python -m detection.<module>`` launchers of these modules. Nothing here imports detectron2 or
pycocotools at import time.
"""
