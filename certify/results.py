"""What each stage of the pipeline hands on, as typed results; :func:`certify.report.body.report_body` is the one
place that turns them into the report's predicate."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Skipped:
    """A stage that could not run, and why (recorded in the report, never faked)."""

    reason: str


@dataclass
class Loaded:
    """The load stage: the model file, the parsed (preprocessed) model, its one input and the evaluation set."""

    data: bytes
    name: str
    model: object  # onnx.ModelProto
    summary: dict
    input_shape: tuple[int, ...]
    samples: tuple | None = None  # (x float32, y int64), the first ``samples`` rows
    dataset: dict | None = None  # {"sha256", "samples"}


@dataclass
class Converted:
    """The converted torch module and what identifies the conversion (converter version, weights digest)."""

    module: object  # torch.nn.Module
    converter: dict


@dataclass
class Bounds:
    """The Lipschitz certificate per norm (the first norm is the report's main one) and each norm's analysis."""

    norms: list[str]
    certificates: dict[str, dict]
    analyses: dict[str, object] = field(default_factory=dict)

    @property
    def first(self) -> dict:
        return self.certificates[self.norms[0]]


@dataclass
class Certified:
    """Every sound method's per-sample verdicts, per norm (:class:`certify.verdicts.NormVerdicts`)."""

    by_norm: dict[str, object]

    def radii(self) -> dict:
        """Per norm, each sample's certified radius: what the attacks cross-check."""
        return {norm: v.radii() for norm, v in self.by_norm.items()}


@dataclass
class Attacked:
    """The robustness evaluation (:func:`certify.robustness.evaluate`'s result) and the transfer results."""

    result: dict
    transfer: list[dict] = field(default_factory=list)


@dataclass
class Results:
    """Everything a run measured, stage by stage."""

    config: dict
    device: str
    loaded: Loaded
    converted: Converted
    conversion: dict  # certify.verify.verify_conversion's record
    bounds: Bounds
    certified: Certified | Skipped
    attacks: Attacked | Skipped
    units: dict | Skipped | None = None  # certify.units' report section; None: not asked for
    properties: list | None = None  # certify.properties.PropertyResult per asked property; None: none asked for
