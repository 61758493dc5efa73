"""Counting host syncs: the calls that make the host wait for a GPU (reading a device tensor's value,
copying between host and device without ``non_blocking``), also on a CPU, where nothing waits.

:class:`HostSyncCounter` is a ``TorchFunctionMode``: it sees every torch function and ``Tensor`` method
called in its scope (not the ones that a Python-level torch function calls inside itself).

- On a GPU run it counts reads of CUDA tensors and copies between device types (device-to-host always,
  host-to-device without ``non_blocking``).
- On CPU (``emulate=True``) it tells device tensors from host ones by a mark: tensors passed through
  :func:`on_device`, and everything computed from them, are "on the device" (a ``Tensor`` subclass that
  propagates through torch ops); a ``.to(<device>)`` of a host tensor is the host-to-device copy it is on
  a GPU run (its result marked) and a ``.to(...)`` / ``.cpu()`` of a marked one the device-to-host copy
  (its result unmarked). Tensors made on the host (random draws, the ODC memory) are host tensors, as
  on a GPU run.

``tests/test_host_sync.py`` and ``bench/gpu_check.py`` use it.
"""

from __future__ import annotations

import collections
from typing import Any, Dict, Optional

import torch
from torch.overrides import TorchFunctionMode

#: reads of a tensor's value by the host (or of a size that depends on the values)
READS = frozenset(
    {
        "item",
        "tolist",
        "numpy",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "nonzero",
        "argwhere",
        "masked_select",
        "unique",
        "unique_consecutive",
        "bincount",
        "repeat_interleave",
    }
)


class DeviceMarked(torch.Tensor):
    """A CPU tensor standing for a device tensor (see the module docstring)."""


def on_device(t: torch.Tensor) -> torch.Tensor:
    """``t`` marked as a device tensor for an emulating :class:`HostSyncCounter`."""
    return t.as_subclass(DeviceMarked)


def _target_device(name: str, args: tuple, kwargs: Dict[str, Any]) -> Optional[torch.device]:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        return torch.device("cuda")
    for c in (kwargs.get("device"), *args[1:2]):
        if isinstance(c, (str, torch.device)):
            return torch.device(c)
        if isinstance(c, torch.Tensor):
            return c.device
    return None


class HostSyncCounter(TorchFunctionMode):
    """``with HostSyncCounter(emulate) as c: ...``; then ``c.counts`` (``read`` / ``copy`` -> calls) and
    ``c.calls`` (``kind:name`` in order)."""

    def __init__(self, emulate: bool = False) -> None:
        super().__init__()
        self.emulate = emulate
        self.counts: collections.Counter = collections.Counter()
        self.calls: list = []

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _device(self, t: Any) -> bool:
        if not isinstance(t, torch.Tensor):
            return False
        return isinstance(t, DeviceMarked) if self.emulate else t.device.type != "cpu"

    def _record(self, kind: str, name: str) -> None:
        self.counts[kind] += 1
        self.calls.append(f"{kind}:{name}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        source = args[0] if args else None
        if name in READS and self._device(source):
            self._record("read", name)
        elif (
            name in ("__getitem__", "__setitem__")
            and len(args) > 1
            and self._bool_index(args[1])
            and (self._device(source) or self._device_index(args[1]))
        ):
            self._record("read", name)  # a boolean mask: the size of the result depends on the values
        if name not in ("to", "cpu", "cuda") or not isinstance(source, torch.Tensor):
            return func(*args, **kwargs)
        target = _target_device(name, args, kwargs)
        out = func(*args, **kwargs)
        if target is None:
            return out
        return self._copy(name, source, target, kwargs.get("non_blocking", False) is True, out)

    @staticmethod
    def _bool_index(index: Any) -> bool:
        items = index if isinstance(index, tuple) else (index,)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)

    def _device_index(self, index: Any) -> bool:
        return any(self._device(i) for i in (index if isinstance(index, tuple) else (index,)))

    def _copy(self, name: str, source: torch.Tensor, target: torch.device, non_blocking: bool, out):
        if self.emulate:
            to_host = isinstance(source, DeviceMarked)
            if to_host or not non_blocking:  # device-to-host always waits; host-to-device unless non_blocking
                self._record("copy", name)
            return out.as_subclass(torch.Tensor) if to_host else on_device(out)
        if source.device.type != target.type and (target.type == "cpu" or not non_blocking):
            self._record("copy", name)
        return out
