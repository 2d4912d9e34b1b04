"""Image completion on real 8x8 digits: c = the observed top half, x = the bottom half, h(c) learned on
original-style digits and frozen, target heads fitted on a few restyled (thickened) digits.

Modules: :mod:`~theory.studies.completion.task` (data, splits, style, dequantisation),
:mod:`~theory.studies.completion.experiment` (the grid through the study engine),
:mod:`~theory.studies.completion.report` (tables), :mod:`~theory.studies.completion.image_grid` (PNG of
completions beside the truth), :mod:`~theory.studies.completion.study` (the ``gentransfer`` study).
"""
