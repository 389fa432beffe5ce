"""WADO-RS rendered resources and thumbnails (PS3.18 §8.3.5 rendering parameters, §10.4; imaging.md §7).

`parse_render_query` turns the request (query parameters and Accept) into `RenderParams`;
`render_frame` renders one frame of a stored instance to JPEG or PNG. Rendering follows the
grayscale pipeline of PS3.4 N.2 as far as a web rendition needs it:

* stored values → Modality LUT: Modality LUT Sequence, else Rescale Slope/Intercept (from the
  frame's Pixel Value Transformation functional group when the object has functional groups);
* → VOI: the request's `window`, else the instance's Window Center/Width (the frame's Frame VOI
  LUT functional group first; the first value when there are several) with its VOI LUT Function,
  else the VOI LUT Sequence, else the minimum–maximum of the frame after the Modality LUT (pixel
  padding values left out); the window functions are PS3.3 C.11.2.1.2 (LINEAR) and C.11.2.1.3
  (LINEAR_EXACT, SIGMOID) with an output range of 0–255, rounded half up;
* MONOCHROME1 is inverted (255 − v);
* colour: RGB as decoded (YBR_FULL/YBR_FULL_422 are converted to RGB by pydicom, YBR_ICT/YBR_RCT
  come out of the JPEG 2000 codec as RGB), scaled to 8 bits, windowed per channel only when the
  request asks for a window; PALETTE COLOR through its palette;
* scaled to fit the viewport keeping the aspect ratio (Lanczos); JPEG (quality) or PNG.

Only the requested frame is decoded (`pydicom.pixels.pixel_array(path, index=…)`); for integer
data the whole pipeline is computed once per distinct stored value (a lookup table over the
frame's value range) and applied with one `np.take`. CPU-bound and blocking: run it in a thread.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.pixels.utils import get_nr_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian

from edge.dicomweb.multipart import parse_content_type

__all__ = [
    "MAX_VIEWPORT",
    "MEDIA_TYPES",
    "THUMBNAIL_MAX",
    "THUMBNAIL_VIEWPORT",
    "WINDOW_FUNCTIONS",
    "RenderError",
    "RenderParams",
    "parse_render_query",
    "render_frame",
]

MEDIA_TYPES = ("image/jpeg", "image/png")  # in order of preference
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
THUMBNAIL_VIEWPORT = (128, 128)
THUMBNAIL_MAX = 512
MAX_VIEWPORT = 4096  # a rendered viewport is clamped to this (no 100000×100000 upscale)
DEFAULT_QUALITY = 90
PNG_COMPRESS_LEVEL = 3  # zlib level: PNG is for exact pixels, speed matters more than bytes

_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_UINT = re.compile(r"\d{1,9}")
_FILE_VOI_FUNCTIONS = {"LINEAR": "linear", "LINEAR_EXACT": "linear-exact", "SIGMOID": "sigmoid"}
_GRAY = ("MONOCHROME1", "MONOCHROME2")
_RGB_LIKE = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
_LUT_MAX_ENTRIES = 1 << 16
_WHOLE_FILE_MAX_BYTES = 256 << 20  # a file read whole as a fallback when its frame cannot be found

Window = tuple[float, float, str]
FloatArray = NDArray[np.float64]
ByteArray = NDArray[np.uint8]


class RenderError(Exception):
    """`status`: 400 a bad rendering parameter, 404 the frame does not exist, 406 the instance
    cannot be rendered (no pixel data, unsupported photometric interpretation, undecodable data)
    or no acceptable media type. `reason` is for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class RenderParams:
    media_type: str = "image/jpeg"  # or image/png
    window: Window | None = None  # center, width, function (linear, linear-exact, sigmoid)
    viewport: tuple[int, int] | None = None  # vw, vh: fit inside, keeping the aspect ratio
    quality: int = DEFAULT_QUALITY  # 1–100, JPEG only


# ---------------------------------------------------------------- request parameters


def _values(query: Mapping[str, Any], key: str) -> list[str]:
    getall = getattr(query, "getall", None)
    if callable(getall):
        raw: Any = getall(key, [])
    else:
        raw = query.get(key)
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    return [str(v) for v in raw]


def _single(query: Mapping[str, Any], key: str) -> str | None:
    values = _values(query, key)
    if not values:
        return None
    if len(set(values)) > 1:
        raise RenderError(400, f"{key}: given more than once with different values")
    return values[0].strip()


def _decimal(text: str, what: str) -> float:
    text = text.strip()
    if not _DECIMAL.fullmatch(text):
        raise RenderError(400, f"window: {what} {text!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise RenderError(400, f"window: {what} {text!r} is out of range")
    return value


def _parse_window(raw: str) -> Window:
    pieces = raw.split(",")
    if len(pieces) not in (2, 3):
        raise RenderError(400, "window: expected center,width[,function]")
    center = _decimal(pieces[0], "center")
    width = _decimal(pieces[1], "width")
    function = pieces[2].strip().lower() if len(pieces) == 3 else "linear"
    if function not in WINDOW_FUNCTIONS:
        raise RenderError(400, f"window: the function must be one of {', '.join(WINDOW_FUNCTIONS)}")
    if function == "linear" and width < 1:
        raise RenderError(400, "window: a linear window needs a width of at least 1")
    if width <= 0:
        raise RenderError(400, f"window: a {function} window needs a width above 0")
    return center, width, function


def _parse_viewport(raw: str, limit: int) -> tuple[int, int]:
    pieces = [p.strip() for p in raw.split(",")]
    if len(pieces) == 6:
        raise RenderError(400, "viewport: source regions (sx,sy,sw,sh) are not supported; give vw,vh")
    if len(pieces) != 2 or not all(_UINT.fullmatch(p) for p in pieces):
        raise RenderError(400, "viewport: expected vw,vh (two positive integers)")
    vw, vh = int(pieces[0]), int(pieces[1])
    if vw < 1 or vh < 1:
        raise RenderError(400, "viewport: vw and vh must be positive")
    return min(vw, limit), min(vh, limit)


def _parse_quality(raw: str) -> int:
    if not _UINT.fullmatch(raw) or not 1 <= int(raw) <= 100:
        raise RenderError(400, "quality: expected an integer from 1 to 100")
    return int(raw)


def _negotiate(accept: str | None) -> str:
    """The rendered media type from Accept (q-values, `image/*`, `*/*`); JPEG when absent or tied."""
    if accept is None or not accept.strip():
        return MEDIA_TYPES[0]
    best: dict[str, tuple[int, float]] = {}  # media type → (specificity, q) of the most specific match
    for item in accept.split(","):
        if not item.strip():
            continue
        media, params = parse_content_type(item)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            continue
        if not math.isfinite(q):
            continue
        q = min(max(q, 0.0), 1.0)
        for candidate in MEDIA_TYPES:
            if media == candidate:
                specificity = 2
            elif media == "image/*":
                specificity = 1
            elif media == "*/*":
                specificity = 0
            else:
                continue
            if candidate not in best or specificity > best[candidate][0]:
                best[candidate] = (specificity, q)
    ranked = sorted(((q, -MEDIA_TYPES.index(m), m) for m, (_, q) in best.items() if q > 0), reverse=True)
    if not ranked:
        raise RenderError(406, f"no acceptable media type: this server renders {' or '.join(MEDIA_TYPES)}")
    return ranked[0][2]


def parse_render_query(query: Mapping[str, Any], *, accept: str | None, thumbnail: bool) -> RenderParams:
    """The rendering parameters of a rendered (`thumbnail=False`) or thumbnail request.

    `query` maps names to a list of values (or one string; a multi-dict with `getall` works too).
    `window=center,width[,function]` (function linear when omitted), `viewport=vw,vh` (thumbnail:
    128,128 by default, at most 512 each way; rendered: at most 4096), `quality=1..100`; an
    `accept` query parameter takes the place of the Accept header (PS3.18 §8.3.3.1). Unknown
    parameters (`annotation`, `charset`, …) are ignored. A malformed value → RenderError(400)
    naming the parameter; no acceptable media type → RenderError(406)."""
    accept_values = _values(query, "accept")
    media_type = _negotiate(",".join(accept_values) if accept_values else accept)
    window = None
    if (raw := _single(query, "window")) is not None:
        window = _parse_window(raw)
    limit = THUMBNAIL_MAX if thumbnail else MAX_VIEWPORT
    viewport: tuple[int, int] | None = THUMBNAIL_VIEWPORT if thumbnail else None
    if (raw := _single(query, "viewport")) is not None:
        viewport = _parse_viewport(raw, limit)
    quality = DEFAULT_QUALITY
    if (raw := _single(query, "quality")) is not None:
        quality = _parse_quality(raw)
    return RenderParams(media_type=media_type, window=window, viewport=viewport, quality=quality)


# ---------------------------------------------------------------- reading


def _read_header(path: Path) -> Dataset:
    try:
        return dcmread(path, stop_before_pixels=True, force=True)
    except OSError:
        raise
    except Exception as exc:
        raise RenderError(406, f"the instance cannot be read as DICOM: {exc}") from exc


def _decode_frame(path: Path, ds: Dataset, index: int) -> np.ndarray:
    """Decode only frame `index` (0-based) straight from the file; pydicom picks the decoder plugin
    (pylibjpeg, Pillow, its own RLE) and converts YBR_FULL(_422) to RGB. A deflated file, or one
    whose encapsulated frames cannot be located from the file (e.g. an odd Basic Offset Table), is
    read whole instead, if not too big."""
    deflated = ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    first_error: Exception | None = None
    if not deflated:
        try:
            return pixel_array(path, index=index)
        except OSError:
            raise
        except AttributeError as exc:
            if "no pixel data" in str(exc).lower():
                raise RenderError(406, "the instance has no pixel data") from exc
            first_error = exc
        except Exception as exc:
            first_error = exc
        if path.stat().st_size > _WHOLE_FILE_MAX_BYTES:
            raise RenderError(406, f"the pixel data cannot be decoded: {first_error}") from first_error
    try:
        return pixel_array(dcmread(path, force=True), index=index)
    except OSError:
        raise
    except Exception as exc:
        error = first_error or exc
        raise RenderError(406, f"the pixel data cannot be decoded: {error}") from exc


def _first_number(value: Any) -> float | None:
    """The first value of a DS/IS/US element value (VM 1-n), None when absent or not numeric."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _functional_group(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """The item of functional group macro `keyword` for frame `index`: per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        seq = per_frame[index].get(keyword)
        if seq:
            return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(keyword)
        if seq:
            return seq[0]
    return None


def _lut(item: Dataset, ds: Dataset) -> tuple[NDArray[np.int64], int, int]:
    """(entries, first stored value mapped, bits per entry) of a LUT item (Modality or VOI LUT)."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    entries = descriptor[0] or _LUT_MAX_ENTRIES
    first = descriptor[1]
    bits = descriptor[2]
    if first >= 1 << 15 and int(ds.get("PixelRepresentation", 0)) == 1:
        first -= 1 << 16  # a US descriptor of signed data
    elem = item["LUTData"]
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        little = ds.original_encoding[1]
        dtype = np.dtype("<u2" if little is not False else ">u2")
        data = np.frombuffer(value, dtype=dtype)[:entries].astype(np.int64)
    elif isinstance(value, int):
        data = np.asarray([value], dtype=np.int64)
    else:
        data = np.asarray(list(value), dtype=np.int64)
    if data.size == 0:
        raise RenderError(406, "a lookup table has no data")
    return data, first, bits


def _lookup(data: NDArray[np.int64], first: int, values: np.ndarray) -> NDArray[np.int64]:
    idx = (np.rint(values) if values.dtype.kind == "f" else values).astype(np.int64) - first
    np.clip(idx, 0, data.size - 1, out=idx)
    return data[idx]


def _modality_transform(ds: Dataset, index: int) -> tuple[Callable[[np.ndarray], FloatArray], bool]:
    """The Modality LUT as a function of stored values, and whether it is monotonic increasing
    (then the minimum and maximum after it are those of the stored values)."""
    seq = ds.get("ModalityLUTSequence")
    if seq:
        data, first, _ = _lut(seq[0], ds)

        def through_lut(values: np.ndarray) -> FloatArray:
            return _lookup(data, first, values).astype(np.float64)

        return through_lut, False
    source: Dataset = ds
    group = _functional_group(ds, index, "PixelValueTransformationSequence")
    if group is not None and ("RescaleSlope" in group or "RescaleIntercept" in group):
        source = group
    slope = _first_number(source.get("RescaleSlope"))
    intercept = _first_number(source.get("RescaleIntercept"))
    if slope is None and intercept is None:
        return (lambda values: values.astype(np.float64)), True
    s = 1.0 if slope is None or slope == 0 else slope
    b = 0.0 if intercept is None else intercept

    def rescale(values: np.ndarray) -> FloatArray:
        out = values.astype(np.float64)
        if s != 1.0:
            out *= s
        if b != 0.0:
            out += b
        return out

    return rescale, s > 0


def _file_window(ds: Dataset, index: int) -> Window | None:
    """The instance's own window: the frame's Frame VOI LUT group, else the top-level attributes;
    the first of several values. None when absent or unusable (so the next VOI source is tried)."""
    source: Dataset = ds
    group = _functional_group(ds, index, "FrameVOILUTSequence")
    if group is not None and "WindowCenter" in group and "WindowWidth" in group:
        source = group
    try:
        center = _first_number(source.get("WindowCenter"))
        width = _first_number(source.get("WindowWidth"))
        function_name = str(source.get("VOILUTFunction") or "LINEAR").strip().upper()
    except Exception:  # a malformed value in the file: fall back to the next VOI source
        return None
    if center is None or width is None:
        return None
    function = _FILE_VOI_FUNCTIONS.get(function_name, "linear")
    if (function == "linear" and width < 1) or width <= 0:
        return None
    return center, width, function


# ---------------------------------------------------------------- pixel transforms


def _window(values: FloatArray, window: Window) -> FloatArray:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3 with y_min = 0 and y_max = 255 (not yet rounded)."""
    center, width, function = window
    if function == "sigmoid":
        with np.errstate(over="ignore"):
            return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "linear":
        center -= 0.5
        width -= 1.0
        if width == 0:  # width 1: a threshold at c - 0.5
            return np.where(values <= center, 0.0, 255.0)
    # for x ≤ c − w/2 the formula is ≤ 0, for x > c + w/2 it is > 255: clipping is the piecewise rule
    return np.clip(((values - center) / width + 0.5) * 255.0, 0.0, 255.0)


def _to_bytes(values: FloatArray) -> ByteArray:
    """Round half up into 0–255."""
    out = np.floor(values + 0.5)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _padding_mask(ds: Dataset, stored: np.ndarray) -> NDArray[np.bool_] | None:
    """Stored values that are pixel padding (Pixel Padding Value … Range Limit), or None."""
    padding = _first_number(ds.get("PixelPaddingValue"))
    if padding is None:
        return None
    limit = _first_number(ds.get("PixelPaddingRangeLimit"))
    low, high = (padding, padding) if limit is None else (min(padding, limit), max(padding, limit))
    return (stored >= low) & (stored <= high)


def _voi(values: FloatArray, ds: Dataset, index: int, window: Window | None,
         present: NDArray[np.bool_] | None) -> ByteArray:
    """Modality values → 0–255. `present` marks the values taking part in a min–max window."""
    if window is None:
        window = _file_window(ds, index)
    if window is not None:
        return _to_bytes(_window(values, window))
    seq = ds.get("VOILUTSequence")
    if seq:
        data, first, bits = _lut(seq[0], ds)
        top = max(float((1 << bits) - 1), float(data.max()), 1.0)
        return _to_bytes(_lookup(data, first, values) * (255.0 / top))
    chosen = values[present] if present is not None and present.any() else values
    if chosen.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = float(chosen.min()), float(chosen.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    # linear-exact with c = (low + high) / 2 and w = high − low is exactly this
    return _to_bytes(np.clip((values - low) * (255.0 / (high - low)), 0.0, 255.0))


def _render_gray(frame: np.ndarray, ds: Dataset, index: int, window: Window | None, invert: bool) -> ByteArray:
    modality, increasing = _modality_transform(ds, index)
    if frame.dtype.kind in "iub" and frame.size:
        low, high = int(frame.min()), int(frame.max())
        span = high - low + 1
        if span <= max(_LUT_MAX_ENTRIES, frame.size):
            # the pipeline once per stored value in [low, high], then one lookup per pixel
            idx = np.subtract(frame, low, dtype=np.int64) if low else frame.astype(np.int64, copy=False)
            domain = np.arange(low, high + 1, dtype=np.int64)
            present = None
            if window is None and _file_window(ds, index) is None and not ds.get("VOILUTSequence"):
                if increasing and "PixelPaddingValue" not in ds:
                    present = np.zeros(span, dtype=bool)
                    present[[0, -1]] = True  # the extremes are present and bound the rest
                else:
                    present = np.bincount(idx.ravel(), minlength=span) > 0
                    if (padding := _padding_mask(ds, domain)) is not None:
                        present &= ~padding
            table = _voi(modality(domain), ds, index, window, present)
            if invert:
                table = 255 - table
            return np.take(table, idx)
    values = modality(frame.astype(np.float64) if frame.dtype.kind != "f" else frame)
    present = None
    if (padding := _padding_mask(ds, frame)) is not None:
        present = ~padding
    if present is None and frame.dtype.kind == "f":
        present = np.isfinite(values)
    out = _voi(np.nan_to_num(values), ds, index, window, present)
    return 255 - out if invert else out


def _render_color(frame: np.ndarray, ds: Dataset, window: Window | None) -> ByteArray:
    rgb = frame[..., :3]
    if window is not None:
        return _to_bytes(_window(rgb.astype(np.float64), window))
    if rgb.dtype == np.uint8:
        return rgb
    bits = int(ds.get("BitsStored") or rgb.dtype.itemsize * 8)
    bits = min(max(bits, 1), rgb.dtype.itemsize * 8)
    return _to_bytes(rgb.astype(np.float64) * (255.0 / ((1 << bits) - 1)))


def _render_palette(frame: np.ndarray, ds: Dataset) -> ByteArray:
    """PALETTE COLOR: the palette is looked up once per stored value in the frame's range."""
    if frame.dtype.kind not in "iu" or frame.size == 0:
        raise RenderError(406, "palette colour pixel data must be integers")
    low, high = int(frame.min()), int(frame.max())
    try:
        table = apply_color_lut(np.arange(low, high + 1, dtype=np.int64), ds)[:, :3]
    except Exception as exc:
        raise RenderError(406, f"the palette colour lookup table cannot be applied: {exc}") from exc
    if table.dtype != np.uint8:  # 16-bit entries, or 8-bit ones stored in 16-bit words
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        top = float((1 << bits) - 1) if bits in (8, 16) else 65535.0
        if int(table.max()) > top:
            top = 65535.0
        table = _to_bytes(table.astype(np.float64) * (255.0 / top))
    idx = np.subtract(frame, low, dtype=np.int64)
    return np.take(table, idx, axis=0)


def _display(frame: np.ndarray, ds: Dataset, index: int, window: Window | None) -> ByteArray:
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    if frame.ndim == 2:
        if photometric in _GRAY:
            return _render_gray(frame, ds, index, window, invert=photometric == "MONOCHROME1")
        if photometric == "PALETTE COLOR":
            return _render_palette(frame, ds)
    elif frame.ndim == 3 and frame.shape[2] >= 3 and photometric in _RGB_LIKE:
        return _render_color(frame, ds, window)
    raise RenderError(406, f"photometric interpretation {photometric} is not supported for rendering")


# ---------------------------------------------------------------- output


def _fit(image: Image.Image, viewport: tuple[int, int] | None) -> Image.Image:
    if viewport is None:
        return image
    width, height = image.size
    scale = min(viewport[0] / width, viewport[1] / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == image.size:
        return image
    reducing_gap = 3.0 if scale < 1 else None  # big reductions: a cheap box pre-reduction first
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=reducing_gap)


def _encode(image: Image.Image, params: RenderParams) -> bytes:
    out = io.BytesIO()
    if params.media_type == "image/png":
        image.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(out, format="JPEG", quality=params.quality)
    return out.getvalue()


def render_frame(path: str | Path, frame_number: int, params: RenderParams) -> bytes:
    """Render frame `frame_number` (1-based) of the DICOM file at `path` as `params.media_type`.

    Raises RenderError: 404 when the frame does not exist, 406 when the instance has no pixel
    data, is not readable DICOM, cannot be decoded or has an unsupported photometric
    interpretation, 400 for a media type this function does not produce. A missing file raises
    the OSError."""
    if params.media_type not in MEDIA_TYPES:
        raise RenderError(400, f"cannot render as {params.media_type}")
    path = Path(path)
    ds = _read_header(path)
    if "Rows" not in ds or "Columns" not in ds:
        raise RenderError(406, "the instance has no pixel data")
    try:
        frames = int(get_nr_frames(ds, warn=False))
    except Exception as exc:
        raise RenderError(406, f"the instance's NumberOfFrames is not usable: {exc}") from exc
    if not 1 <= frame_number <= frames:
        raise RenderError(404, f"frame {frame_number} is out of range (the instance has {frames})")
    index = frame_number - 1
    frame = _decode_frame(path, ds, index)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    display = _display(frame, ds, index, params.window)
    image = Image.fromarray(np.ascontiguousarray(display))
    return _encode(_fit(image, params.viewport), params)

