"""Config files shipped with ssmix, found by name after any install.

A source checkout keeps them in the repository's ``configs/`` and ``detection/{presets,configs}/``; a
wheel carries the same trees inside the package (``ssmix/configs``, ``ssmix/detection/presets``, ...;
see setup.py), so a config argument may be a file path or a name relative to its tree:
``mocov2_samix_c``, ``digits/mocov2``, ``digits/mocov2.yaml`` or ``configs/digits/mocov2.yaml``.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from ssmix.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Shelf:
    """The shipped configs under ``tree`` (a repository-relative folder), minus the ``skip`` sub-folders.

    Files and folders whose name starts with ``_`` (``_base_/``, ``linear/_base.yaml``) are fragments that
    other configs include: they resolve (so the loader can say they are fragments) but are never suggested.
    """

    tree: str
    skip: Tuple[str, ...] = ()

    def directory(self) -> Optional[Path]:
        """The installed copy inside the package, else the source checkout's folder (None: neither)."""
        for root in (_PACKAGE, _PACKAGE.parent):
            if (root / self.tree).is_dir():
                return root / self.tree
        return None

    def names(self) -> List[str]:
        """Runnable config names, e.g. ``['byol', ..., 'digits/mocov2', ...]``."""
        directory = self.directory()
        if directory is None:
            return []
        names = []
        for path in directory.rglob("*.yaml"):
            parts = path.relative_to(directory).with_suffix("").parts
            if not any(p.startswith("_") for p in parts) and parts[0] not in self.skip:
                names.append("/".join(parts))
        return sorted(names)

    def resolve(self, arg: str) -> str:
        """``arg`` if it is a file or an absolute path, else the shipped config it names.

        Raises :class:`ConfigError` naming the closest shipped names when there is none.
        """
        if os.path.isfile(arg) or os.path.isabs(arg):
            return arg
        name = arg.replace(os.sep, "/")
        name = name[: -len(".yaml")] if name.endswith(".yaml") else name
        parts = self.tree.split("/")
        for i in range(len(parts)):  # configs/linear/digits -> digits, linear/digits -> digits
            prefix = "/".join(parts[i:]) + "/"
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        directory = self.directory()
        if directory is not None and (directory / f"{name}.yaml").is_file():
            return str(directory / f"{name}.yaml")
        raise ConfigError(
            f"config file not found: '{arg}' is neither a file nor a config shipped with ssmix"
            f"{self._hint(name, directory)}"
        )

    def _hint(self, name: str, directory: Optional[Path]) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        close += [n for n in names if n not in close and n.rsplit("/", 1)[-1] == name.rsplit("/", 1)[-1]]
        if close:
            return f" (did you mean {', '.join(close[:5])}?)"
        if names:
            return f" (shipped names are the .yaml files under {directory}, e.g. {names[0]})"
        return ""


PRETRAIN = Shelf("configs", skip=("linear", "slurm"))  # ssmix-pretrain, ssmix-visualize
LINEAR = Shelf("configs/linear")  # ssmix-linear-eval
DETECTION = Shelf("detection/presets")  # ssmix-detect (embedded backend)
DETECTRON2 = Shelf("detection/configs")  # python -m ssmix.detection.train_net --config-file
