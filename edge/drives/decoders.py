"""The built-in modalities' message decoders (`ModalityPlugin.decoder`): camera images, range readings, audio chunks.

Each is an `edge.modalities.MessageDecoder` the synchroniser (edge.drives.sync) imports by its dotted path when it
plans a drive; what the values are is the frame's contract (edge.frames): a BGR / mono image array, a REP-117
range reading dict, a (channels, samples) int16 PCM chunk. The image decoder's `check` holds the camera format
policy (a stream's format is its first image's: same aspect ratio converted, another aspect ratio skipped).
The functions of edge.drives.messages are looked up at call time (`M.decode_image`), so a test can make one fail.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from edge.drives import messages as M
from edge.drives import topics as T
from edge.modalities.interface import DecodeContext, MessageDecoder

_PIXEL_ENCODINGS = ("bgr8", "rgb8", "bgra8", "rgba8", "mono8", "mono16", "8uc1", "16uc1", "8uc3")
_MONO = ("mono8", "mono16", "8uc1", "16uc1")
MAX_ASPECT_CHANGE = 0.02  # beyond this relative change of width/height an image is another crop or camera


class DecodedImage(NamedTuple):
    """An image as decoded, before its stream's format check: the array and the encoding its message declares."""

    image: np.ndarray
    declared: str | None


def pixel_encoding(msg: Any, msgtype: str) -> str | None:
    """The pixel encoding a camera message declares: Image.encoding, or the first part of a CompressedImage format
    ("mono8; jpeg compressed mono8"); None when it declares none ("jpeg")."""
    text = (msg.encoding if msgtype == T.IMAGE else (msg.format or "").split(";")[0]).strip().lower()
    return text if text in _PIXEL_ENCODINGS else None


def _image_label(img: np.ndarray, declared: str | None, reduce: int) -> str:
    """A decoded image's format as a diagnostic names it: its size in the camera's pixels and its encoding."""
    h, w = img.shape[0] * reduce, img.shape[1] * reduce
    ch = img.shape[2] if img.ndim == 3 else 1
    enc = declared or {(3, "uint8"): "bgr8", (1, "uint8"): "mono8", (1, "uint16"): "mono16"}.get(
        (ch, img.dtype.name), f"{ch}-channel {img.dtype.name}")
    return f"{w}x{h} {enc}"


def decode_image(payload: Any, msgtype: str, ctx: DecodeContext) -> DecodedImage:
    msg = ctx.message(payload, msgtype)
    return DecodedImage(M.decode_image(msg, msgtype, reduce=ctx.cfg.image_reduce), pixel_encoding(msg, msgtype))


def check_image(value: DecodedImage, key: str, topic: str, stamp: int, ctx: Any) -> np.ndarray | None:
    """Whether a camera's image can be used, against its stream's format (that of its first image). Another
    resolution at the same aspect ratio or another encoding: used (the encoders resize and convert), noted once as
    `converted`; another aspect ratio: skipped, noted once as `format`. The span of either is recorded."""
    img, declared = value
    reduce = ctx.cfg.image_reduce
    mono = declared in _MONO if declared else img.ndim == 2 or img.shape[2] == 1
    fmt = (img.shape[:2], img.shape[2] if img.ndim == 3 else 1, img.dtype.str, mono)
    label = _image_label(img, declared, reduce)
    first = ctx.formats.setdefault(key, (fmt, label))
    if fmt == first[0]:
        return img
    (h0, w0), (h, w) = first[0][0], fmt[0]
    if abs((w / h) / (w0 / h0) - 1) > MAX_ASPECT_CHANGE:
        ctx.log.note("format", topic, stamp, f"image {label}, the stream's {first[1]}: another aspect ratio (a crop or "
                                             f"another camera, its calibration does not hold); skipped, {key} missing "
                                             f"until its images are {first[1]} again")
        return None
    ctx.log.note("converted", topic, stamp, f"image {label}, the stream's {first[1]}: the same field of view in "
                                            f"another format; used, converted by the encoders")
    return img


def decode_range(payload: Any, msgtype: str, ctx: DecodeContext) -> dict[str, Any]:
    """A range reading; straight from CDR when the drive's Range layout is known (the most frequent messages)."""
    if isinstance(payload, (bytes, bytearray, memoryview)) and ctx.range_floats is not None:
        return M.decode_range_cdr(payload, ctx.range_floats)
    return M.decode_range(ctx.message(payload, msgtype))


def decode_audio(payload: Any, msgtype: str, ctx: DecodeContext) -> np.ndarray:
    return M.decode_audio(ctx.message(payload, msgtype))


IMAGE = MessageDecoder(types=(T.IMAGE, T.COMPRESSED_IMAGE), decode=decode_image, check=check_image, noun="image")
RANGE = MessageDecoder(types=(T.RANGE,), decode=decode_range, fixed_size=True, noun="reading")
AUDIO = MessageDecoder(types=(T.IMAGE,), decode=decode_audio, noun="chunk")
