"""ssmix: self-supervised contrastive pre-training with cross-view and learned (SAMix) mixup."""

__version__ = "0.1.0"
