"""sockproto's sans-IO core: header specs, the incremental decoder and encoders.

Nothing in this package imports Twisted (a test enforces it), so it can drive any I/O
layer, or none, as h11 and wsproto do.
"""

from .decoder import (
    DEFAULT_MAX_PAYLOAD,
    DecoderFailed,
    Event,
    Frame,
    FrameDecoder,
    Malformed,
    Oversized,
    UnexpectedKind,
)
from .header import (
    INT16,
    INT32,
    INT32LE,
    PRESETS,
    SPF1,
    FieldValue,
    HeaderSpec,
    PayloadTooLarge,
    PayloadTooShort,
    SpecError,
)
from .spf1 import MAX_ERROR_MESSAGE, ErrorCode, Kind, decode_error, encode_error
from .units import parse_duration, parse_size

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "INT16",
    "INT32",
    "INT32LE",
    "MAX_ERROR_MESSAGE",
    "PRESETS",
    "SPF1",
    "DecoderFailed",
    "ErrorCode",
    "Event",
    "FieldValue",
    "Frame",
    "FrameDecoder",
    "HeaderSpec",
    "Kind",
    "Malformed",
    "Oversized",
    "PayloadTooLarge",
    "PayloadTooShort",
    "SpecError",
    "UnexpectedKind",
    "decode_error",
    "encode_error",
    "parse_duration",
    "parse_size",
]
