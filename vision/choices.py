"""Every closed set of options the system offers, defined once, with the proto enum value of each.

The gateway's forms and OpenAPI enums, the servicers' enum <-> name conversions, the trainer's config checks
and the CLI's ``choices=`` all derive from these. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vision.errors import InvalidArgument
from vision.v1 import explainer_pb2, trainer_pb2


@dataclass(frozen=True)
class Choices:
    """A closed set of option names (in the order users see them), each with its proto enum value.

    ``default`` is what an unset field (the enum's 0, or an omitted form field) means.
    """

    field: str
    enums: Mapping[str, int]
    default: str

    def __post_init__(self) -> None:
        if self.default not in self.enums:
            raise ValueError(f"default {self.default!r} of {self.field} is not one of its choices")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.enums)

    def accepted(self) -> str:
        return ", ".join(self.names)

    def check(self, name: str, field: str = "") -> str:
        """``name`` if it is one of the choices, else `InvalidArgument` listing the accepted ones.

        ``field`` names the option as the caller knows it (a form field "arch"); default: ``self.field``.
        """
        if name not in self.enums:
            raise InvalidArgument(f"unknown {field or self.field} {name!r}; accepted: {self.accepted()}")
        return name

    def to_enum(self, name: str, field: str = "") -> int:
        """The proto enum value of ``name`` (`InvalidArgument` for an unknown name)."""
        return self.enums[self.check(name, field)]

    def from_enum(self, value: int) -> str:
        """The name of a proto enum value; 0 (unspecified) is the default."""
        if value == 0:
            return self.default
        for name, enum in self.enums.items():
            if enum == value:
                return name
        raise InvalidArgument(f"{self.field} {value} is not a known value; accepted: {self.accepted()}")


ARCHITECTURES = Choices(
    "architecture",
    {
        "resnet18": trainer_pb2.ARCHITECTURE_RESNET18,
        "resnet50": trainer_pb2.ARCHITECTURE_RESNET50,
        "smallcnn": trainer_pb2.ARCHITECTURE_SMALLCNN,
    },
    default="resnet18",
)
# Architectures with torchvision ImageNet weights (fetched by `vision models fetch-pretrained`).
PRETRAINED_ARCHITECTURES: tuple[str, ...] = ("resnet18", "resnet50")

# The last conv block of each architecture: its output is global-average-pooled straight into ``fc``.
FINAL_CONV_LAYER: Mapping[str, str] = {"resnet18": "layer4", "resnet50": "layer4", "smallcnn": "features"}


def pretrained_by_default(architecture: str) -> bool:
    """Training starts from ImageNet weights unless the architecture has none (smallcnn)."""
    return architecture in PRETRAINED_ARCHITECTURES


OPTIMIZERS = Choices(
    "optimizer", {"adam": trainer_pb2.OPTIMIZER_ADAM, "sgd": trainer_pb2.OPTIMIZER_SGD}, default="adam"
)

CAM_METHODS = Choices(
    "method",
    {
        "cam": explainer_pb2.CAM_METHOD_CAM,
        "gradcam": explainer_pb2.CAM_METHOD_GRAD_CAM,
        "gradcampp": explainer_pb2.CAM_METHOD_GRAD_CAM_PLUS_PLUS,
    },
    default="gradcam",
)

COLORMAPS = Choices(
    "colormap",
    {
        "jet": explainer_pb2.COLORMAP_JET,
        "viridis": explainer_pb2.COLORMAP_VIRIDIS,
        "inferno": explainer_pb2.COLORMAP_INFERNO,
        "turbo": explainer_pb2.COLORMAP_TURBO,
        "gray": explainer_pb2.COLORMAP_GRAY,
    },
    default="jet",
)

# How explain_svc encodes overlays; ``default`` is VISION_EXPLAIN_OVERLAY_FORMAT's default (an unset request
# field means the service's setting). The media type of each is in ``OVERLAY_MEDIA_TYPES``.
OVERLAY_FORMATS = Choices(
    "overlay_format",
    {"jpeg": explainer_pb2.OVERLAY_FORMAT_JPEG, "png": explainer_pb2.OVERLAY_FORMAT_PNG},
    default="jpeg",
)
OVERLAY_MEDIA_TYPES: Mapping[str, str] = {"jpeg": "image/jpeg", "png": "image/png"}


def overlay_field(overlay_format: str) -> str:
    """The ExplainResponse field (of its ``overlay`` oneof) that holds an overlay in ``overlay_format``."""
    return f"overlay_{OVERLAY_FORMATS.check(overlay_format)}"


def reply_overlay(reply: explainer_pb2.ExplainResponse) -> tuple[str, bytes]:
    """(format, bytes) of the overlay an ExplainResponse carries; a reply without one reads as empty PNG."""
    which = reply.WhichOneof("overlay") or overlay_field("png")
    return which.removeprefix("overlay_"), getattr(reply, which)
