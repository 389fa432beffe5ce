"""WADO-RS rendering (edge/dicomweb/render.py): query parsing, the grayscale pipeline against
PS3.3 C.11 (exact values on synthetic datasets, and pydicom's own windowing as the reference),
colour and palette images, multi-frame files, viewport fitting, errors, and a timing (printed)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litestar.datastructures import MultiDict
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing, pixel_array
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from edge.dicomweb.render import RenderError, RenderParams, parse_render_query, render_frame

# ---------------------------------------------------------------- helpers


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(str(path))


def write_dataset(tmp_path: Path, arr: np.ndarray, *, photometric: str = "MONOCHROME2",
                  bits_stored: int | None = None, name: str = "synthetic.dcm", **attrs: Any) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def render_png(path: Path, frame: int = 1, **kwargs: Any) -> NDArray[np.uint8]:
    image = decode(render_frame(path, frame, RenderParams(media_type="image/png", **kwargs)))
    assert image.format == "PNG"
    return np.asarray(image)


def round_half_up(values: np.ndarray) -> NDArray[np.uint8]:
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def reference_window(values: np.ndarray, center: float, width: float, function: str) -> NDArray[np.uint8]:
    """pydicom's own windowing (PS3.3 C.11.2.1.2) with an 8-bit output range as the reference."""
    ref = Dataset()
    ref.PhotometricInterpretation = "MONOCHROME2"
    ref.BitsStored = 8
    ref.PixelRepresentation = 0
    ref.WindowCenter = center
    ref.WindowWidth = width
    ref.VOILUTFunction = function.upper().replace("-", "_")
    return round_half_up(apply_windowing(np.asarray(values, dtype=np.float64), ref))


def reference_minmax(values: np.ndarray) -> NDArray[np.uint8]:
    values = np.asarray(values, dtype=np.float64)
    low, high = values.min(), values.max()
    return round_half_up((values - low) * (255.0 / (high - low)))


GRADIENT = np.arange(1024, dtype=np.uint16).reshape(32, 32)  # stored value = flat index


# ---------------------------------------------------------------- parse_render_query


def test_defaults() -> None:
    assert parse_render_query({}, accept=None, thumbnail=False) == RenderParams()
    assert parse_render_query({}, accept=None, thumbnail=False) == RenderParams(
        media_type="image/jpeg", window=None, viewport=None, quality=90)
    assert parse_render_query({}, accept=None, thumbnail=True).viewport == (128, 128)


@pytest.mark.parametrize(("raw", "window"), [
    ("40,400", (40.0, 400.0, "linear")),
    ("40,400,linear", (40.0, 400.0, "linear")),
    (" -1000.5 , 1e3 , LINEAR-EXACT ", (-1000.5, 1000.0, "linear-exact")),
    ("0,0.5,sigmoid", (0.0, 0.5, "sigmoid")),
    ("0,1", (0.0, 1.0, "linear")),
])
def test_window_parameter(raw: str, window: tuple[float, float, str]) -> None:
    assert parse_render_query({"window": [raw]}, accept=None, thumbnail=False).window == window


@pytest.mark.parametrize("raw", ["40", "40,400,cubic", "a,400", "40,0", "40,0.5", "40,0.5,linear",
                                 "40,-1,linear-exact", "40,0,sigmoid", "nan,400", "inf,1", "40,400,",
                                 "1_0,400", "", "40,400,linear,1", "0x10,5"])
def test_bad_window_is_400(raw: str) -> None:
    with pytest.raises(RenderError) as info:
        parse_render_query({"window": [raw]}, accept=None, thumbnail=False)
    assert info.value.status == 400
    assert "window" in info.value.reason


def test_viewport_and_quality_parameters() -> None:
    q = parse_render_query({"viewport": ["256,128"], "quality": ["55"]}, accept=None, thumbnail=False)
    assert (q.viewport, q.quality) == ((256, 128), 55)
    assert parse_render_query({"viewport": "64,32"}, accept=None, thumbnail=True).viewport == (64, 32)
    assert parse_render_query({"viewport": ["1000,300"]}, accept=None, thumbnail=True).viewport == (512, 300)
    assert parse_render_query({"viewport": ["100000,5"]}, accept=None, thumbnail=False).viewport == (4096, 5)
    for q_raw in ("1", "100"):
        assert parse_render_query({"quality": [q_raw]}, accept=None, thumbnail=False).quality == int(q_raw)
    for key, raw in [("viewport", "0,10"), ("viewport", "-1,10"), ("viewport", "a,b"), ("viewport", "10"),
                     ("viewport", "1,2,3,4,5,6"), ("viewport", "1.5,2"), ("quality", "0"), ("quality", "101"),
                     ("quality", "9.5"), ("quality", "x"), ("quality", "")]:
        with pytest.raises(RenderError) as info:
            parse_render_query({key: [raw]}, accept=None, thumbnail=False)
        assert info.value.status == 400
        assert key in info.value.reason


def test_repeated_parameters() -> None:
    same = parse_render_query({"window": ["1,2", "1,2"]}, accept=None, thumbnail=False)
    assert same.window == (1.0, 2.0, "linear")
    with pytest.raises(RenderError) as info:
        parse_render_query({"window": ["1,2", "3,4"]}, accept=None, thumbnail=False)
    assert info.value.status == 400 and "window" in info.value.reason
    multi = MultiDict([("quality", "70"), ("viewport", "10,20"), ("annotation", "patient")])
    params = parse_render_query(multi, accept="image/png", thumbnail=False)
    assert params == RenderParams(media_type="image/png", viewport=(10, 20), quality=70)


@pytest.mark.parametrize(("accept", "media_type"), [
    (None, "image/jpeg"),
    ("", "image/jpeg"),
    ("image/png", "image/png"),
    ("image/jpeg", "image/jpeg"),
    ("image/*", "image/jpeg"),
    ("*/*", "image/jpeg"),
    ("application/dicom, image/png;q=0.2", "image/png"),
    ("image/png;q=0.9, image/jpeg;q=0.5", "image/png"),
    ("image/jpeg;q=0, image/*", "image/png"),
    ("image/*;q=0, image/png", "image/png"),
    ("image/png; q=0.5, image/jpeg; q=0.5", "image/jpeg"),
    ('image/jpeg; transfer-syntax="1.2.840.10008.1.2.4.50"', "image/jpeg"),
    ("IMAGE/PNG", "image/png"),
])
def test_accept_negotiation(accept: str | None, media_type: str) -> None:
    assert parse_render_query({}, accept=accept, thumbnail=False).media_type == media_type


@pytest.mark.parametrize("accept", ["application/dicom", "image/gif, text/html", "image/*;q=0", "image/png;q=0"])
def test_unacceptable_media_type_is_406(accept: str) -> None:
    with pytest.raises(RenderError) as info:
        parse_render_query({}, accept=accept, thumbnail=False)
    assert info.value.status == 406


def test_accept_query_parameter_wins_over_the_header() -> None:
    params = parse_render_query({"accept": ["image/png"]}, accept="image/jpeg", thumbnail=False)
    assert params.media_type == "image/png"


# ---------------------------------------------------------------- grayscale pipeline (synthetic, exact)


def test_linear_window_exact_values(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, GRADIENT)
    out = render_png(path, window=(512, 256, "linear")).ravel()
    # PS3.3 C.11.2.1.2.1 with c=512, w=256: x ≤ 384 → 0, x > 639 → 255, else (x − 511.5)/255 + 0.5 → y = x − 384
    assert out[[0, 383, 384, 385, 400, 512, 638, 639, 640, 1023]].tolist() == [0, 0, 0, 1, 16, 128, 254, 255, 255, 255]
    assert np.array_equal(out, reference_window(GRADIENT.ravel(), 512, 256, "linear"))


def test_linear_exact_window_exact_values(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, GRADIENT)
    out = render_png(path, window=(512, 256, "linear-exact")).ravel()
    # C.11.2.1.3.2: ((x − 512)/256 + 0.5) × 255: 448 → 63.75, 512 → 127.5, 576 → 191.25
    assert out[[0, 384, 385, 448, 512, 576, 640, 641]].tolist() == [0, 0, 1, 64, 128, 191, 255, 255]
    assert np.array_equal(out, reference_window(GRADIENT.ravel(), 512, 256, "linear-exact"))


def test_sigmoid_window_exact_values(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, GRADIENT)
    out = render_png(path, window=(512, 256, "sigmoid")).ravel()
    # C.11.2.1.3.1: 255 / (1 + exp(−4 (x − 512) / 256)): 448 → 68.6, 512 → 127.5, 576 → 186.4
    assert out[[0, 448, 512, 576, 1023]].tolist() == [0, 69, 128, 186, 255]
    assert np.array_equal(out, reference_window(GRADIENT.ravel(), 512, 256, "sigmoid"))


def test_window_applies_after_the_rescale(tmp_path: Path) -> None:
    stored = np.arange(-512, 512, dtype=np.int16).reshape(32, 32)
    path = write_dataset(tmp_path, stored, RescaleSlope=2, RescaleIntercept=-100)
    out = render_png(path, window=(0, 400, "linear-exact"))
    hu = stored.astype(np.float64) * 2 - 100
    assert np.array_equal(out, reference_window(hu, 0, 400, "linear-exact"))
    assert out[stored == 50].tolist() == [128]  # 2·50 − 100 = 0 = the centre


def test_the_instance_window_and_its_function(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, GRADIENT, WindowCenter=[512, 100], WindowWidth=[256, 50],
                         VOILUTFunction="LINEAR_EXACT")
    assert np.array_equal(render_png(path).ravel(), reference_window(GRADIENT.ravel(), 512, 256, "linear-exact"))
    # the request's window wins over the instance's
    assert np.array_equal(render_png(path, window=(300, 100, "linear")).ravel(),
                          reference_window(GRADIENT.ravel(), 300, 100, "linear"))


def test_min_max_default_and_pixel_padding(tmp_path: Path) -> None:
    stored = (np.arange(1024, dtype=np.int16) - 24).reshape(32, 32)  # −24 … 999
    path = write_dataset(tmp_path, stored, RescaleSlope=1, RescaleIntercept=-1024)
    out = render_png(path)
    assert np.array_equal(out, reference_minmax(stored))
    assert (out.min(), out.max()) == (0, 255)

    padded = stored.copy()
    padded[:4, :] = -2000  # outside the field of view
    path = write_dataset(tmp_path, padded, name="padded.dcm", RescaleSlope=1, RescaleIntercept=-1024,
                         PixelPaddingValue=-2000)
    out = render_png(path)
    body = padded[4:]
    assert np.array_equal(out[4:], reference_minmax(body))  # the padding takes no part in min–max
    assert (out[:4] == 0).all()
    without = write_dataset(tmp_path, padded, name="unpadded.dcm", RescaleSlope=1, RescaleIntercept=-1024)
    assert not np.array_equal(render_png(without)[4:], out[4:])


def test_voi_lut_sequence(tmp_path: Path) -> None:
    item = Dataset()
    item.add_new(0x00283002, "US", [1024, 0, 8])  # LUT Descriptor: entries, first mapped, bits
    lut = [255 - i // 4 for i in range(1024)]
    item.add_new(0x00283006, "US", lut)  # LUT Data
    path = write_dataset(tmp_path, GRADIENT, VOILUTSequence=Sequence([item]))
    assert np.array_equal(render_png(path).ravel(), np.asarray(lut, dtype=np.uint8))

    item12 = Dataset()
    item12.add_new(0x00283002, "US", [512, 256, 12])
    lut12 = [i * 8 for i in range(512)]
    item12.add_new(0x00283006, "US", lut12)
    path = write_dataset(tmp_path, GRADIENT, name="voi12.dcm", VOILUTSequence=Sequence([item12]))
    expected = np.asarray(lut12, dtype=np.float64)[np.clip(GRADIENT.ravel().astype(int) - 256, 0, 511)]
    assert np.array_equal(render_png(path).ravel(), round_half_up(expected * 255 / 4095))


def test_modality_lut_sequence(tmp_path: Path) -> None:
    item = Dataset()
    item.add_new(0x00283002, "US", [1024, 0, 16])
    lut = [(1023 - i) * 2 for i in range(1024)]  # decreasing
    item.add_new(0x00283006, "US", lut)
    path = write_dataset(tmp_path, GRADIENT, ModalityLUTSequence=Sequence([item]))
    values = np.asarray(lut, dtype=np.float64)
    assert np.array_equal(render_png(path).ravel(), reference_minmax(values))
    assert np.array_equal(render_png(path, window=(1000, 500, "linear")).ravel(),
                          reference_window(values, 1000, 500, "linear"))


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    mono2 = write_dataset(tmp_path, GRADIENT, name="m2.dcm")
    mono1 = write_dataset(tmp_path, GRADIENT, name="m1.dcm", photometric="MONOCHROME1")
    for window in (None, (512, 256, "linear"), (600, 300, "sigmoid")):
        assert np.array_equal(render_png(mono1, window=window), 255 - render_png(mono2, window=window))

    ds = dcmread(pydicom_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ct1 = tmp_path / "ct_mono1.dcm"
    ds.save_as(ct1)
    assert np.array_equal(render_png(ct1), 255 - render_png(pydicom_file("CT_small.dcm")))


def test_per_frame_functional_groups(tmp_path: Path) -> None:
    frames = np.stack([GRADIENT, GRADIENT[::-1], GRADIENT.T]).astype(np.uint16)
    windows = [(512.0, 256.0), (300.0, 200.0), (700.0, 100.0)]
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([Dataset()])
    shared.PixelValueTransformationSequence[0].RescaleSlope = 1
    shared.PixelValueTransformationSequence[0].RescaleIntercept = 0
    per_frame = []
    for i, (center, width) in enumerate(windows):
        group = Dataset()
        voi = Dataset()
        voi.WindowCenter = center
        voi.WindowWidth = width
        group.FrameVOILUTSequence = Sequence([voi])
        if i == 1:
            transform = Dataset()
            transform.RescaleSlope = 1
            transform.RescaleIntercept = 100
            group.PixelValueTransformationSequence = Sequence([transform])
        per_frame.append(group)
    path = write_dataset(tmp_path, frames, WindowCenter=10, WindowWidth=10,
                         SharedFunctionalGroupsSequence=Sequence([shared]),
                         PerFrameFunctionalGroupsSequence=Sequence(per_frame))
    for i, (center, width) in enumerate(windows):
        values = frames[i].astype(np.float64) + (100 if i == 1 else 0)
        assert np.array_equal(render_png(path, i + 1), reference_window(values, center, width, "linear")), i


# ---------------------------------------------------------------- pydicom's test files


def reference_gray(path: Path, index: int) -> NDArray[np.uint8]:
    """The expected rendering computed with pydicom: its frame, its Modality LUT, the first window
    of the instance (pydicom's windowing) or min–max."""
    ds = dcmread(path)
    values = apply_modality_lut(pixel_array(ds, index=index), ds).astype(np.float64)
    if "WindowCenter" in ds:
        center = ds["WindowCenter"].value
        width = ds["WindowWidth"].value
        center = float(center[0]) if ds["WindowCenter"].VM > 1 else float(center)
        width = float(width[0]) if ds["WindowWidth"].VM > 1 else float(width)
        return reference_window(values, center, width, str(ds.get("VOILUTFunction", "LINEAR")))
    return reference_minmax(values)


GRAY_FILES = [
    "CT_small.dcm",  # signed 16-bit, rescale, no window: min–max
    "MR_small.dcm",  # window 600/1600
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "JPGExtended.dcm",  # 12-bit JPEG extended
    "JPEG2000.dcm",
    "693_J2KI.dcm",  # lossy JPEG 2000 CT with rescale and window
    "J2K_pixelrep_mismatch.dcm",
    "JPEGLSNearLossless_16.dcm",
    "image_dfl.dcm",  # deflated transfer syntax
    "examples_overlay.dcm",  # several windows: the first one
    "liver_1frame.dcm",  # 1-bit segmentation with functional groups
    "rtdose_1frame.dcm",  # 32-bit
]


@pytest.mark.parametrize("name", GRAY_FILES)
def test_grayscale_test_files(name: str) -> None:
    path = pydicom_file(name)
    ds = dcmread(path, stop_before_pixels=True)
    out = render_png(path)
    assert out.shape == (ds.Rows, ds.Columns)
    assert np.array_equal(out, reference_gray(path, 0))
    assert out.max() > out.min()  # not a blank image
    jpeg = decode(render_frame(path, 1, RenderParams()))
    assert (jpeg.format, jpeg.mode, jpeg.size) == ("JPEG", "L", (ds.Columns, ds.Rows))


def to_8bit(arr: np.ndarray, bits: int) -> NDArray[np.uint8]:
    return arr.astype(np.uint8) if arr.dtype == np.uint8 else round_half_up(arr * (255.0 / ((1 << bits) - 1)))


COLOUR_FILES = [
    ("SC_rgb_rle.dcm", True),  # RGB, RLE
    ("SC_rgb_jpeg_dcmtk.dcm", False),  # YBR_FULL, JPEG baseline
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", False),  # YBR_FULL_422, JPEG baseline
    ("SC_rgb_jpeg_gdcm.dcm", True),  # RGB, JPEG lossless (process 14 SV1)
    ("SC_rgb_gdcm_KY.dcm", False),  # RGB, JPEG 2000
    ("SC_rgb_jls_lossy_line.dcm", False),  # RGB, JPEG-LS near-lossless
    ("SC_ybr_full_422_uncompressed.dcm", False),  # native YBR_FULL_422
    ("SC_rgb_rle_16bit.dcm", True),  # 16 bits per sample
    ("SC_rgb_rle_32bit.dcm", True),  # 32 bits per sample
    ("SC_rgb_jpeg.dcm", None),  # an odd Basic Offset Table: read whole
    ("ExplVR_BigEnd.dcm", None),  # RGB, big endian
    ("GDCMJ2K_TextGBR.dcm", None),  # YBR_RCT JPEG 2000
    ("examples_rgb_color.dcm", None),
    ("examples_jpeg2k.dcm", None),  # YBR_RCT
]
# SC_rgb_*: 100×100, horizontal bands (sampled at column 50, rows 5, 15, … 95)
BANDS = [(255, 0, 0), (255, 128, 128), (0, 255, 0), (128, 255, 128), (0, 0, 255), (128, 128, 255),
         (0, 0, 0), (64, 64, 64), (192, 192, 192), (255, 255, 255)]


@pytest.mark.parametrize(("name", "lossless"), COLOUR_FILES)
def test_colour_test_files(name: str, lossless: bool | None) -> None:
    path = pydicom_file(name)
    ds = dcmread(path)
    out = render_png(path)
    assert out.shape == (ds.Rows, ds.Columns, 3)
    assert np.array_equal(out, to_8bit(pixel_array(ds, index=0), ds.BitsStored))
    if lossless is not None:  # the colour bands, so YBR is converted to RGB exactly once
        bands = np.asarray([out[row, 50] for row in range(5, 100, 10)], dtype=int)
        tolerance = 0 if lossless else 8
        assert np.abs(bands - np.asarray(BANDS)).max() <= tolerance, bands.tolist()
    jpeg = decode(render_frame(path, 1, RenderParams()))
    assert (jpeg.format, jpeg.mode, jpeg.size) == ("JPEG", "RGB", (ds.Columns, ds.Rows))


def test_colour_is_windowed_only_when_asked() -> None:
    path = pydicom_file("SC_rgb_rle.dcm")
    plain = render_png(path)
    windowed = render_png(path, window=(128, 64, "linear"))
    assert np.array_equal(windowed, reference_window(plain, 128, 64, "linear"))
    assert not np.array_equal(windowed, plain)


def test_palette_colour() -> None:
    path = pydicom_file("examples_palette.dcm")
    ds = dcmread(path)
    out = render_png(path)
    assert out.shape == (ds.Rows, ds.Columns, 3)
    rgb = apply_color_lut(pixel_array(ds), ds)[..., :3]
    assert np.array_equal(out, round_half_up(rgb * (255.0 / 65535.0)))
    assert len({tuple(p) for p in out.reshape(-1, 3)[::97]}) > 20  # really in colour


def test_multi_frame_grayscale() -> None:
    path = pydicom_file("rtdose.dcm")  # 15 frames, 32-bit
    ds = dcmread(path)
    first, fifth = render_png(path, 1), render_png(path, 5)
    assert not np.array_equal(first, fifth)
    assert np.array_equal(fifth, reference_minmax(pixel_array(ds, index=4)))
    own = pixel_array(ds)[4].astype(np.float64)  # pydicom's frame 5, windowed by pydicom
    assert np.array_equal(render_png(path, 5, window=(1e6, 4e5, "linear")), reference_window(own, 1e6, 4e5, "linear"))
    assert np.array_equal(render_png(pydicom_file("rtdose_rle.dcm"), 5), fifth)  # RLE, same data


def test_multi_frame_colour() -> None:
    path = pydicom_file("examples_ybr_color.dcm")  # 30 frames, YBR_FULL_422 JPEG baseline
    first, tenth = render_png(path, 1), render_png(path, 10)
    assert not np.array_equal(first, tenth)
    assert np.array_equal(tenth, pixel_array(path, index=9))
    assert render_png(path, 30).shape == (240, 320, 3)
    two = pydicom_file("SC_rgb_rle_2frame.dcm")
    assert np.array_equal(render_png(two, 2), pixel_array(two, index=1))
    assert not np.array_equal(render_png(two, 2), render_png(two, 1))


# ---------------------------------------------------------------- viewport and encoding


def test_viewport_fits_keeping_the_aspect_ratio() -> None:
    ct = pydicom_file("CT_small.dcm")  # 128 × 128
    assert decode(render_frame(ct, 1, RenderParams(viewport=(64, 32)))).size == (32, 32)
    tall = pydicom_file("JPGExtended.dcm")  # 256 wide, 1024 high
    assert decode(render_frame(tall, 1, RenderParams(viewport=(100, 100)))).size == (25, 100)
    assert decode(render_frame(tall, 1, RenderParams(viewport=(1000, 2048)))).size == (512, 2048)  # scales up
    thumb = parse_render_query({}, accept=None, thumbnail=True)
    image = decode(render_frame(tall, 1, thumb))
    assert (image.format, image.size) == ("JPEG", (32, 128))
    wide = pydicom_file("examples_rgb_color.dcm")  # 320 × 240
    image = decode(render_frame(wide, 1, RenderParams(media_type="image/png", viewport=(128, 128))))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (128, 96))


def test_quality_changes_the_jpeg() -> None:
    path = pydicom_file("examples_rgb_color.dcm")
    low = render_frame(path, 1, RenderParams(quality=10))
    high = render_frame(path, 1, RenderParams(quality=95))
    assert len(low) < len(high)
    assert decode(low).size == decode(high).size == (320, 240)


# ---------------------------------------------------------------- errors


def test_frame_out_of_range_is_404() -> None:
    for name, frame in [("CT_small.dcm", 0), ("CT_small.dcm", 2), ("rtdose.dcm", 16), ("rtdose.dcm", -1)]:
        with pytest.raises(RenderError) as info:
            render_frame(pydicom_file(name), frame, RenderParams())
        assert info.value.status == 404, (name, frame)
    assert render_frame(pydicom_file("rtdose.dcm"), 15, RenderParams())


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"])
def test_no_pixel_data_is_406(name: str) -> None:
    with pytest.raises(RenderError) as info:
        render_frame(pydicom_file(name), 1, RenderParams())
    assert info.value.status == 406
    assert "no pixel data" in info.value.reason


@pytest.mark.parametrize("name", [
    "JPEG2000-embedded-sequence-delimiter.dcm",  # no decoder copes with it
    "JPEG-lossy.dcm",  # a misplaced marker segment (JPGExtended.dcm is the repaired file)
    "MR_truncated.dcm",  # pixel data shorter than Rows × Columns
    "badVR.dcm",  # NumberOfFrames "1A"
])
def test_undecodable_is_406(name: str) -> None:
    with pytest.raises(RenderError) as info:
        render_frame(pydicom_file(name), 1, RenderParams())
    assert info.value.status == 406


def test_not_dicom_and_missing_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM at all" * 10)
    with pytest.raises(RenderError) as info:
        render_frame(junk, 1, RenderParams())
    assert info.value.status == 406
    with pytest.raises(FileNotFoundError):
        render_frame(tmp_path / "missing.dcm", 1, RenderParams())


def test_unsupported_photometric_interpretation_is_406(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, GRADIENT.astype(np.uint8))
    ds = dcmread(path)
    ds.PhotometricInterpretation = "HSV"
    ds.save_as(path)
    with pytest.raises(RenderError) as info:
        render_frame(path, 1, RenderParams())
    assert info.value.status == 406 and "HSV" in info.value.reason


# ---------------------------------------------------------------- timing


def test_timing_512_ct(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512]
    stored = np.hypot(yy - 256, xx - 256) * -8 + 2000 + rng.normal(0, 30, (512, 512))
    stored = stored.clip(-2000, 3000).astype(np.int16)
    path = write_dataset(tmp_path, stored, name="ct512.dcm", RescaleSlope=1, RescaleIntercept=-1024,
                         WindowCenter=40, WindowWidth=400)
    cases = {
        "JPEG q90, instance window": RenderParams(),
        "JPEG, sigmoid window": RenderParams(window=(40, 400, "sigmoid")),
        "PNG": RenderParams(media_type="image/png"),
        "thumbnail 128 JPEG": RenderParams(viewport=(128, 128)),
    }
    lines = []
    for label, params in cases.items():
        render_frame(path, 1, params)
        runs = 20
        started = time.perf_counter()
        for _ in range(runs):
            data = render_frame(path, 1, params)
        lines.append(f"{label}: {(time.perf_counter() - started) / runs * 1000:.1f} ms")
        assert decode(data).size == (params.viewport or (512, 512))
    with capsys.disabled():
        print("\n[render] 512×512 16-bit CT: " + "; ".join(lines))
