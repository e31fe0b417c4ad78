"""Preference losses (MPO and the DPO family) behind one registry, plus the MLC auxiliary loss.

    loss_fn = build_loss("mpo", {"beta": 1.5})
    out = loss_fn(PreferenceInputs(policy=..., anchor_reference=..., ...))
    out.loss.backward(); log(out.metrics)
"""
from __future__ import annotations

from typing import Any, Mapping

from .base import LossOutput, PreferenceInputs, PreferenceLoss, SequenceLogps, options_from_mapping, reward_metrics
from .cpo import CPOLoss, CPOOptions
from .dpo import DPOLoss, DPOOptions
from .ipo import IPOLoss, IPOOptions
from .mlc import MLCOptions, MLCProjection, mlc_applies, mlc_loss
from .mpo import MPOLoss, MPOOptions
from .orpo import ORPOLoss, ORPOOptions
from .simpo import SimPOLoss, SimPOOptions

LOSSES: dict[str, tuple[type, type[PreferenceLoss]]] = {
    "mpo": (MPOOptions, MPOLoss),
    "dpo": (DPOOptions, DPOLoss),
    "ipo": (IPOOptions, IPOLoss),
    "simpo": (SimPOOptions, SimPOLoss),
    "orpo": (ORPOOptions, ORPOLoss),
    "cpo": (CPOOptions, CPOLoss),
}


def _lookup(name: str) -> tuple[type, type[PreferenceLoss]]:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {sorted(LOSSES)}")
    return LOSSES[name]


def options_class(name: str) -> type:
    """The options dataclass of loss `name` (for config parsing and defaults)."""
    return _lookup(name)[0]


def build_loss(name: str, options: Mapping[str, Any] | Any | None = None) -> PreferenceLoss:
    """Build loss `name` from an options dataclass instance, a plain mapping (unknown keys are an error), or
    None for the defaults."""
    options_type, loss_type = _lookup(name)
    if options is None:
        options = options_type()
    elif isinstance(options, Mapping):
        options = options_from_mapping(options_type, options)
    elif not isinstance(options, options_type):
        raise TypeError(f"options for loss {name!r} must be a {options_type.__name__} or a mapping, "
                        f"got {type(options).__name__}")
    return loss_type(options)


__all__ = [
    "LOSSES", "CPOLoss", "CPOOptions", "DPOLoss", "DPOOptions", "IPOLoss", "IPOOptions", "LossOutput", "MLCOptions",
    "MLCProjection", "MPOLoss", "MPOOptions", "ORPOLoss", "ORPOOptions", "PreferenceInputs", "PreferenceLoss",
    "SequenceLogps", "SimPOLoss", "SimPOOptions", "build_loss", "mlc_applies", "mlc_loss", "options_class",
    "reward_metrics",
]
