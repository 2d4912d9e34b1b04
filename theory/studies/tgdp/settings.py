"""The TGDP study's settings (a ``[tgdp]`` table) and the names of its methods, in table order.

Methods and the experiment both read these; neither is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from shared_embed.errors import ConfigError
from shared_embed.train import TrainConfig
from theory.engine.schema import dataclass_from_table

#: the methods in table order; REFERENCES do not use the target sample (fitted once per seed and version)
METHODS = (
    "target_only",
    "fine_tune",
    "domain_guidance",
    "tgdp",
    "tgdp_reg",
    "tgdp_kernel",
    "tgdp_noisy_clf",
    "source_only",
    "tgdp_exact_w",
    "tgdp_exact_h",
    "tgdp_kernel_switch",
    "tgdp_kernel_switch_ft",
)
#: the switched kernel guidance and the score it hands over to below its switch time
SWITCH_LOW = {"tgdp_kernel_switch": "target_only", "tgdp_kernel_switch_ft": "fine_tune"}
REFERENCES = ("source_only", "tgdp_exact_w", "tgdp_exact_h")
#: the learned TGDP variants (no exact w or h anywhere), each compared with both baselines
LEARNED = ("tgdp", "tgdp_reg", "tgdp_kernel", "tgdp_noisy_clf", "tgdp_kernel_switch", "tgdp_kernel_switch_ft")


@dataclass
class TGDPSettings:
    """The grid, the heads, every training phase (``TrainConfig``s; seeds are set per cell) and the evaluation."""

    n_source: int = 10_000
    n_targets: Sequence[int] = (10, 100, 1000)
    seeds: Sequence[int] = (0, 1, 2)
    conditional: Sequence[bool] = (False, True)
    methods: Sequence[str] = METHODS
    head: dict[str, Any] = field(default_factory=lambda: {"width": 64, "blocks": 2, "time_features": 32})
    source_train: TrainConfig = field(  # no validation rows: patience is moot; None keeps the study fingerprint
        default_factory=lambda: TrainConfig(steps=3000, batch_size=256, lr=2e-3, patience=None, description="source")
    )
    target_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=3000, batch_size=256, lr=1e-3, eval_every=50, patience=20, description="target only"
        )
    )
    fine_tune_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=2000, batch_size=256, lr=5e-4, eval_every=50, patience=20, description="fine-tune"
        )
    )
    val_fraction: float = 0.2
    dg_weight: float = 1.5
    #: ``TGDPConfig`` fields for every TGDP fit (``*_train`` as TrainConfig dicts; read by ``TGDPConfig.from_options``)
    tgdp: dict[str, Any] = field(
        default_factory=lambda: {
            "classifier_train": {"steps": 2000, "batch_size": 256},
            "guidance_train": {"steps": 1500, "batch_size": 128},
            "time_classifier_train": {"steps": 2000, "batch_size": 256},
        }
    )
    regularizers: dict[str, float] = field(default_factory=lambda: {"eta_cycle": 1.0, "eta_consistency": 1.0})
    #: the network-free estimators: kernel guidance (KDE bandwidth, source rows used) and noisy classifier
    kernel: dict[str, Any] = field(default_factory=lambda: {"bandwidth": "scott", "max_rows": 2000})
    noisy_classifier: dict[str, Any] = field(
        default_factory=lambda: {"hidden": (64, 64), "train": {"steps": 2000, "batch_size": 256}}
    )
    #: the switched kernel guidance: ``diffusion.tgdp.switch_time.select_switch`` keywords (candidates, points,
    #: t_min, samples); empty: its defaults
    switch: dict[str, Any] = field(default_factory=dict)
    #: ``theory.truth.tasks.TwoGaussianTask`` keywords (empty: the paper's task; see ``inside_support_task``)
    task: dict[str, Any] = field(default_factory=dict)
    rtol: float = 1e-4
    n_eval: int = 2000
    n_mmd: int = 1000
    n_errors: int = 2000
    times: Sequence[float] = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9)
    plot_times: Sequence[float] = (0.01, 0.1, 0.5)
    keep_samples: int = 400

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TGDPSettings:
        """Settings from a [tgdp] table or :meth:`to_dict` (``*_train`` as TrainConfig fields); ConfigError
        naming an unknown key or method."""
        out = dataclass_from_table(cls, raw, "tgdp")
        bad = sorted(set(out.methods) - set(METHODS))
        if bad:
            raise ConfigError(f"unknown method(s) {bad}; valid: {list(METHODS)}")
        return out

    def study(self) -> dict[str, Any]:
        """What makes two runs one study (the grid axes a rerun may extend left out)."""
        d = self.to_dict()
        for key in ("n_targets", "seeds", "conditional", "methods"):
            d.pop(key)
        return {"experiment": {"kind": "tgdp"}, "tgdp": d}
