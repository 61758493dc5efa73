"""ssmix: self-supervised contrastive learning with learned mixup (SAMix)."""
from setuptools import find_packages, setup

setup(
    name="ssmix",
    version="0.1.0",
    description="Self-supervised contrastive pre-training with cross-view and learned (SAMix) mixup",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["ssmix", "ssmix.*", "linear_eval", "detection"]),
    package_data={"detection": ["configs/*.yaml", "presets/*.yaml", "README.md"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "lightly>=1.6,<1.7",
        "pyyaml>=6",
        "numpy",
        "pillow",
        "tqdm",
        "tensorboard",
        "scikit-learn",
    ],
    # faiss is an extra, never a requirement: faiss-cpu and faiss-gpu-* all install the same `faiss`
    # module and must not be installed together. Pick one: '.[cpu]' or '.[gpu]' (CUDA 12 wheels; for
    # CUDA 11 use `pip install faiss-gpu-cu11`). Without faiss, k-means runs on torch (slower).
    extras_require={
        "cpu": ["faiss-cpu>=1.7"],
        "gpu": ["faiss-gpu-cu12>=1.8"],
        "test": ["pytest>=7", "pycocotools>=2.0"],
        # Detectron2 is not on PyPI: build it from its source (see detection/README.md).
        "detection": ["pycocotools>=2.0"],
    },
)
