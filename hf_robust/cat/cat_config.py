"""`CATConfig`: trl's `SFTConfig` plus the CAT (C-AdvUL) loss and the inner embedding attack."""

import math
from dataclasses import dataclass, field
from numbers import Real

from trl import SFTConfig

from .arguments import AttackArguments


def _check_number(name: str, value, minimum: float, *, inclusive: bool = True, maximum: float | None = None) -> None:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= minimum if inclusive else value > minimum) and (maximum is None or value <= maximum)
    if not ok:
        low = f"{'>=' if inclusive else '>'} {minimum}"
        allowed = f"a finite number {low}" + ("" if maximum is None else f" and <= {maximum}")
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")


@dataclass
class CATConfig(AttackArguments, SFTConfig):
    """Configuration of `CATTrainer`: `SFTConfig` fields, the attack fields of `AttackArguments`, and the loss.

    The loss of one step is `away_weight * away + toward_weight * toward + utility_weight * utility`, where, on the
    adversarial rows attacked once per step, `away = -CE(harmful target | prompt + delta)` (below `-away_cutoff` it
    continues with slope 0.001) and `toward = CE(refusal | prompt + delta)` (below `toward_cutoff` slope 0.001), and
    `utility` is the clean SFT cross-entropy of the utility rows. Defaults follow the paper's C-AdvUL configuration.
    """

    adversarial_fraction: float = field(
        default=0.125,
        metadata={"help": "Probability that a training row is adversarial (the rest are utility rows). In [0, 1]."},
    )
    mixing_stopping_strategy: str = field(
        default="first_exhausted",
        metadata={"help": "How the two datasets are interleaved (datasets.interleave_datasets): 'first_exhausted' "
                  "stops when either runs out; 'all_exhausted' oversamples the smaller one.",
                  "choices": ["first_exhausted", "all_exhausted"]},
    )
    away_weight: float = field(default=0.5, metadata={"help": "Weight of the away (harmful target) loss. >= 0."})
    toward_weight: float = field(default=0.5, metadata={"help": "Weight of the toward (refusal) loss. >= 0."})
    utility_weight: float = field(default=1.0, metadata={"help": "Weight of the clean utility SFT loss. >= 0."})
    away_cutoff: float = field(
        default=5.0,
        metadata={"help": "Per row, once the harmful-target CE exceeds this, the away loss is -cutoff - 0.001 CE "
                  "instead of -CE, so an unbounded -CE cannot dominate. > 0."},
    )
    toward_cutoff: float = field(
        default=0.5,
        metadata={"help": "Per row, once the refusal CE falls below this, the toward loss is cutoff + 0.001 CE. "
                          ">= 0."},
    )

    def __post_init__(self):
        super().__post_init__()
        _check_number("adversarial_fraction", self.adversarial_fraction, 0.0, maximum=1.0)
        if self.mixing_stopping_strategy not in ("first_exhausted", "all_exhausted"):
            raise ValueError(
                "`mixing_stopping_strategy` must be 'first_exhausted' or 'all_exhausted', "
                f"got {self.mixing_stopping_strategy!r}."
            )
        for name in ("away_weight", "toward_weight", "utility_weight", "toward_cutoff"):
            _check_number(name, getattr(self, name), 0.0)
        _check_number("away_cutoff", self.away_cutoff, 0.0, inclusive=False)
        if self.packing or self.padding_free:
            raise ValueError("`packing` and `padding_free` must be False for CAT: every row is attacked on its own.")
        self.attack_config()  # validates the attack fields
