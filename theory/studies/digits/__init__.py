"""The digits study: few-shot transfer on real 8x8 digits (no ground-truth density).

- :mod:`.pixels`: dequantisation and the logit transform with its exact Jacobian (bits/dim in pixel space);
- :mod:`.task`: the task, its styles and seeded disjoint splits;
- :mod:`.evaluation`, :mod:`.report`, :mod:`.image_grid`: scoring, tables and PNG grids;
- :mod:`.domain_ratio`: does the target lie inside the source's support (TGDP's premise);
- :mod:`.tgdp`: conditional TGDP on the digits;
- :mod:`.experiment`: the grid over heads and variants; :mod:`.study`: the study of ``gentransfer run``.
"""

from theory.studies.digits.pixels import LogitPixels
from theory.studies.digits.task import STYLES, DigitsTask, LabelledImages, apply_style, load_digit_levels

__all__ = ["STYLES", "DigitsTask", "LabelledImages", "LogitPixels", "apply_style", "load_digit_levels"]
