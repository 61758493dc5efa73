"""Detection transfer of ssmix encoders (the MoCo protocol, docs/detection.md).

Two backends:

- embedded (default, any machine): ``python -m detection.train CONFIG [key=value ...]`` on
  torchvision.models.detection set up as detectron2's R50-C4 / R-FPN (``detection.engine``);
- detectron2 (optional, built from source): ``python -m detection.convert`` then
  ``python -m detection.train_net --config-file detection/configs/<file>.yaml MODEL.WEIGHTS <pkl>``.

Nothing here imports detectron2 or pycocotools at import time.
"""
