"""The result of bounding one layer's operator norm: a guaranteed upper bound and an achieved lower bound."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class LayerBound:
    """Operator-norm bounds of one layer, per sample, on flattened tensors.

    ``upper`` is guaranteed (floating-point rounding included); ``lower`` is ``||A v|| / ||v||`` for an explicit
    ``v`` and therefore never exceeds the true norm (up to the rounding of that one evaluation).
    """

    upper: float | None  # guaranteed upper bound (None: no finite bound; then `reason` says why)
    lower: float | None  # achieved lower bound: ||A v|| / ||v|| for an explicit v (None if not computed)
    method: str  # e.g. "svd", "gram-iteration", "fourier-circular+svd", "constant", "unbounded"
    exact: bool = False  # True when upper is the exact value (up to the fp margin)
    ms: float = 0.0  # time taken
    reason: str | None = None
    norm: str = "l2"  # "l2" or "linf"

    def ratio(self) -> float | None:
        """upper / lower when both are positive: how far the guaranteed bound may be from the truth."""
        if self.upper is None or self.lower is None or self.upper <= 0 or self.lower <= 0:
            return None
        return self.upper / self.lower

    def to_dict(self) -> dict:
        """A JSON-ready dict with the ratio included."""
        out = asdict(self)
        out["ratio"] = self.ratio()
        return out
