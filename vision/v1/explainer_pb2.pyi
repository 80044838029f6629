from vision.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CamMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAM_METHOD_UNSPECIFIED: _ClassVar[CamMethod]
    CAM_METHOD_CAM: _ClassVar[CamMethod]
    CAM_METHOD_GRAD_CAM: _ClassVar[CamMethod]
    CAM_METHOD_GRAD_CAM_PLUS_PLUS: _ClassVar[CamMethod]

class Colormap(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLORMAP_UNSPECIFIED: _ClassVar[Colormap]
    COLORMAP_JET: _ClassVar[Colormap]
    COLORMAP_VIRIDIS: _ClassVar[Colormap]
    COLORMAP_INFERNO: _ClassVar[Colormap]
    COLORMAP_TURBO: _ClassVar[Colormap]
    COLORMAP_GRAY: _ClassVar[Colormap]

class OverlayFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVERLAY_FORMAT_UNSPECIFIED: _ClassVar[OverlayFormat]
    OVERLAY_FORMAT_JPEG: _ClassVar[OverlayFormat]
    OVERLAY_FORMAT_PNG: _ClassVar[OverlayFormat]
CAM_METHOD_UNSPECIFIED: CamMethod
CAM_METHOD_CAM: CamMethod
CAM_METHOD_GRAD_CAM: CamMethod
CAM_METHOD_GRAD_CAM_PLUS_PLUS: CamMethod
COLORMAP_UNSPECIFIED: Colormap
COLORMAP_JET: Colormap
COLORMAP_VIRIDIS: Colormap
COLORMAP_INFERNO: Colormap
COLORMAP_TURBO: Colormap
COLORMAP_GRAY: Colormap
OVERLAY_FORMAT_UNSPECIFIED: OverlayFormat
OVERLAY_FORMAT_JPEG: OverlayFormat
OVERLAY_FORMAT_PNG: OverlayFormat

class ExplainRequest(_message.Message):
    __slots__ = ("image", "model", "method", "target_class_id", "target_label", "layer", "alpha", "colormap", "top_k", "overlay_max_side", "overlay_format")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_LABEL_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    COLORMAP_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_MAX_SIDE_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FORMAT_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    model: _common_pb2.ModelRef
    method: CamMethod
    target_class_id: int
    target_label: str
    layer: str
    alpha: float
    colormap: Colormap
    top_k: int
    overlay_max_side: int
    overlay_format: OverlayFormat
    def __init__(self, image: _Optional[bytes] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., method: _Optional[_Union[CamMethod, str]] = ..., target_class_id: _Optional[int] = ..., target_label: _Optional[str] = ..., layer: _Optional[str] = ..., alpha: _Optional[float] = ..., colormap: _Optional[_Union[Colormap, str]] = ..., top_k: _Optional[int] = ..., overlay_max_side: _Optional[int] = ..., overlay_format: _Optional[_Union[OverlayFormat, str]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("prediction", "top_k", "target", "method", "layer", "heatmap_png", "overlay_png", "overlay_jpeg", "model", "timing")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_JPEG_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    prediction: _common_pb2.ScoredClass
    top_k: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredClass]
    target: _common_pb2.ScoredClass
    method: CamMethod
    layer: str
    heatmap_png: bytes
    overlay_png: bytes
    overlay_jpeg: bytes
    model: _common_pb2.ModelRef
    timing: _common_pb2.Timing
    def __init__(self, prediction: _Optional[_Union[_common_pb2.ScoredClass, _Mapping]] = ..., top_k: _Optional[_Iterable[_Union[_common_pb2.ScoredClass, _Mapping]]] = ..., target: _Optional[_Union[_common_pb2.ScoredClass, _Mapping]] = ..., method: _Optional[_Union[CamMethod, str]] = ..., layer: _Optional[str] = ..., heatmap_png: _Optional[bytes] = ..., overlay_png: _Optional[bytes] = ..., overlay_jpeg: _Optional[bytes] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., timing: _Optional[_Union[_common_pb2.Timing, _Mapping]] = ...) -> None: ...
