"""Differential privacy (per-example clipping, noise, Opacus's accountants, the calibration a
scenario gets when it loads) and label-private split learning (P3EFT, attacks)."""

from . import plan  # noqa: F401  (registers the privacy resolver)
