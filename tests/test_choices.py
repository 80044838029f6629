"""The closed sets of options (vision.choices): names <-> proto enums, defaults, errors, and full coverage of
the proto enums, so an enum value added to a .proto without a choice fails here."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from vision.choices import (
    ARCHITECTURES,
    CAM_METHODS,
    COLORMAPS,
    FINAL_CONV_LAYER,
    OPTIMIZERS,
    OVERLAY_FORMATS,
    OVERLAY_MEDIA_TYPES,
    PRETRAINED_ARCHITECTURES,
    Choices,
    pretrained_by_default,
)
from vision.errors import InvalidArgument
from vision.models.architectures import build_model
from vision.v1 import explainer_pb2, trainer_pb2

pytestmark = pytest.mark.fast

# Each set with its proto enum and the name the enum's values are written under (ARCHITECTURE_RESNET18 ...).
SETS: dict[str, tuple[Choices, EnumTypeWrapper]] = {
    "architecture": (ARCHITECTURES, trainer_pb2.Architecture),
    "optimizer": (OPTIMIZERS, trainer_pb2.Optimizer),
    "method": (CAM_METHODS, explainer_pb2.CamMethod),
    "colormap": (COLORMAPS, explainer_pb2.Colormap),
    "overlay_format": (OVERLAY_FORMATS, explainer_pb2.OverlayFormat),
}
DEFAULTS = {
    "architecture": "resnet18",
    "optimizer": "adam",
    "method": "gradcam",
    "colormap": "jet",
    "overlay_format": "jpeg",
}


@pytest.mark.parametrize("field", SETS)
def test_every_name_round_trips_through_its_enum(field: str) -> None:
    choices, enum = SETS[field]
    assert choices.field == field
    for name in choices.names:
        value = choices.to_enum(name)
        assert value != 0 and enum.Name(value)  # a real, specified value of the proto enum
        assert choices.from_enum(value) == name
        assert choices.check(name) == name


@pytest.mark.parametrize("field", SETS)
def test_every_specified_enum_value_has_a_choice(field: str) -> None:
    choices, enum = SETS[field]
    specified = {number for label, number in enum.items() if not label.endswith("_UNSPECIFIED")}
    assert set(choices.enums.values()) == specified
    assert len(set(choices.enums.values())) == len(choices.names), "two names share one enum value"
    assert enum.Value(enum.Name(0)) == 0 and enum.Name(0).endswith("_UNSPECIFIED")


def test_the_enum_names_spell_the_choice_names() -> None:
    # ARCHITECTURE_RESNET18 <-> resnet18, CAM_METHOD_GRAD_CAM_PLUS_PLUS <-> gradcampp: no crossed wires.
    assert {n: trainer_pb2.Architecture.Name(v) for n, v in ARCHITECTURES.enums.items()} == {
        "resnet18": "ARCHITECTURE_RESNET18",
        "resnet50": "ARCHITECTURE_RESNET50",
        "smallcnn": "ARCHITECTURE_SMALLCNN",
    }
    assert {n: trainer_pb2.Optimizer.Name(v) for n, v in OPTIMIZERS.enums.items()} == {
        "adam": "OPTIMIZER_ADAM",
        "sgd": "OPTIMIZER_SGD",
    }
    assert {n: explainer_pb2.CamMethod.Name(v) for n, v in CAM_METHODS.enums.items()} == {
        "cam": "CAM_METHOD_CAM",
        "gradcam": "CAM_METHOD_GRAD_CAM",
        "gradcampp": "CAM_METHOD_GRAD_CAM_PLUS_PLUS",
    }
    for name, value in COLORMAPS.enums.items():
        assert explainer_pb2.Colormap.Name(value) == f"COLORMAP_{name.upper()}"
    for name, value in OVERLAY_FORMATS.enums.items():
        assert explainer_pb2.OverlayFormat.Name(value) == f"OVERLAY_FORMAT_{name.upper()}"


def test_the_overlay_setting_accepts_exactly_the_overlay_formats_each_with_a_media_type() -> None:
    from explain_svc.config import ExplainSettings

    annotation = ExplainSettings.model_fields["overlay_format"].annotation
    assert get_args(annotation) == OVERLAY_FORMATS.names
    assert ExplainSettings().overlay_format == OVERLAY_FORMATS.default
    assert set(OVERLAY_MEDIA_TYPES) == set(OVERLAY_FORMATS.names)


@pytest.mark.parametrize("field", SETS)
def test_unspecified_means_the_default(field: str) -> None:
    choices, _ = SETS[field]
    assert choices.default == DEFAULTS[field]
    assert choices.from_enum(0) == DEFAULTS[field]


@pytest.mark.parametrize("field", SETS)
def test_an_unknown_name_is_invalid_and_the_message_lists_what_is_accepted(field: str) -> None:
    choices, _ = SETS[field]
    with pytest.raises(InvalidArgument) as caught:
        choices.to_enum("no-such-thing")
    message = caught.value.message
    assert field in message and "'no-such-thing'" in message
    assert all(name in message for name in choices.names)
    with pytest.raises(InvalidArgument, match=field):
        choices.check("")
    with pytest.raises(InvalidArgument, match=choices.names[0]):
        choices.from_enum(999)


def test_a_default_outside_the_choices_is_refused() -> None:
    with pytest.raises(ValueError, match="default 'c'"):
        Choices("thing", {"a": 1, "b": 2}, default="c")


@pytest.mark.parametrize("architecture", ARCHITECTURES.names)
def test_every_architecture_builds_with_a_final_conv_layer_and_an_fc_head(architecture: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no weight initialisation, milliseconds
        model = build_model(architecture, 3).eval()
        layer = dict(model.named_modules())[FINAL_CONV_LAYER[architecture]]
        assert isinstance(model.fc, torch.nn.Linear) and model.fc.out_features == 3
        seen = []
        layer.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    assert len(seen) == 1 and len(seen[0]) == 4 and seen[0][1] == model.fc.in_features


def test_an_unknown_architecture_is_refused_with_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="resnet18, resnet50, smallcnn"):
        build_model("vgg16", 3)


def test_the_pretrained_rule_follows_the_architectures() -> None:
    assert set(PRETRAINED_ARCHITECTURES) <= set(ARCHITECTURES.names)
    assert set(FINAL_CONV_LAYER) == set(ARCHITECTURES.names)
    assert {a: pretrained_by_default(a) for a in ARCHITECTURES.names} == {
        "resnet18": True,
        "resnet50": True,
        "smallcnn": False,
    }
