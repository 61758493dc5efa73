"""ssmix's packages and shipped configs; the metadata, dependencies and commands are in pyproject.toml.

The config trees stay where users know them (``configs/``, ``detection/presets/``, ``detection/configs/``)
and are mapped into the package, so an installed ssmix finds them as ``ssmix/configs`` etc. without a
second copy in git (``ssmix.shipped`` looks there, then in the source checkout). The top-level
``detection/`` and ``linear_eval/`` folders are launchers for a checkout and are not installed.
"""

from setuptools import find_packages, setup

#: package -> repository folder: YAML only, nothing importable
CONFIG_TREES = {
    "ssmix.configs": "configs",
    "ssmix.detection.presets": "detection/presets",
    "ssmix.detection.configs": "detection/configs",
}

setup(
    packages=find_packages(include=["ssmix", "ssmix.*"]) + list(CONFIG_TREES),
    package_dir=CONFIG_TREES,
    package_data={name: ["**/*.yaml", "**/*.sbatch"] for name in CONFIG_TREES},
)
