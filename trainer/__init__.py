"""Orbit trainer for axial_keras models (experiments, strategies, CLI `python -m trainer.train`).

The trainer lands with its own issue; this package exists so the layout and imports are fixed.
"""
