"""Real-data tasks (no ground-truth density): the 8x8 digits few-shot transfer task.

- :mod:`.pixels`: dequantisation and the logit transform with its exact Jacobian (bits/dim in pixel space);
- :mod:`.digits`: the task, its styles and seeded disjoint splits;
- :mod:`.digit_eval`, :mod:`.digits_report`, :mod:`.digit_grid`: scoring, tables and PNG grids;
- :mod:`.digits_experiment`: the experiment over heads and variants.
"""

from .digits import STYLES, DigitsTask, LabelledImages, apply_style, load_digit_levels
from .pixels import LogitPixels

__all__ = ["STYLES", "DigitsTask", "LabelledImages", "LogitPixels", "apply_style", "load_digit_levels"]
