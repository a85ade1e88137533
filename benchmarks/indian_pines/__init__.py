"""The parts of ``python -m benchmarks.indian_pines_fc`` (protocol: that module's docstring).

:mod:`.data` the scene, split and pixel picks; :mod:`.heads` the HyperSL-FC heads and
metrics; :mod:`.backbones` the arms' backbones and their features; :mod:`.protocol`
one run over seeds, layouts and label budgets; :mod:`.summary` the per-arm summary,
the table and merging runs.
"""
