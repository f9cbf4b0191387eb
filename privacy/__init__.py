"""Differential privacy: the `[privacy]` table, Opacus-backed mechanisms and accounting."""
