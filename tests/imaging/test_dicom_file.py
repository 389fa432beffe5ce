"""workers/imaging/dicom_file.py against pydicom's own test data and hostile input.

Plain synchronous tests: no stack, no services. Every file pydicom ships locally (its
`data/test_files` and `data/charset_files` directories; files pydicom fetches from the network
on demand are not there and are not used) goes through `parse_instance`; the accepted ones are
compared with what pydicom itself makes of the whole file."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.data import data_manager
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.filereader import data_element_generator
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG4HP41,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from workers.imaging.dicom_file import (
    MAX_NESTING_DEPTH,
    InstanceRejected,
    ParsedInstance,
    PixelIndex,
    name_key,
    parse_instance,
)

# pydicom warns (and logs) about every odd value it meets; hostile input is full of them
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DATA_ROOT = Path(data_manager.DATA_ROOT)
PIXEL_KEYS = {"7FE00008", "7FE00009", "7FE00010"}
PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
CODES = {"not_dicom", "malformed", "missing_attribute", "invalid_uid"}


def local_test_files() -> list[str]:
    """Files shipped inside the pydicom package, relative to its data directory."""
    found = []
    for directory in ("test_files", "charset_files"):
        for path in sorted((DATA_ROOT / directory).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                found.append(path.relative_to(DATA_ROOT).as_posix())
    return found


ALL_FILES = local_test_files()

_NO_PREAMBLE = "no 128-byte preamble followed by 'DICM'"
_MEDIA_MISMATCH = "MediaStorageSOPInstanceUID"

# Which of pydicom's files are rejected, and why (established by running them all).
EXPECTED_REJECTIONS: dict[str, tuple[str, str]] = {
    # not DICOM files at all, or DICOM data sets without the PS3.10 preamble + "DICM"
    "charset_files/FileInfo.txt": ("not_dicom", _NO_PREAMBLE),
    "test_files/README.txt": ("not_dicom", _NO_PREAMBLE),
    "test_files/crayons.icc": ("not_dicom", _NO_PREAMBLE),
    "test_files/dicomdirtests/README.txt": ("not_dicom", _NO_PREAMBLE),
    "test_files/dicomdirtests/TINY_ALPHA/README": ("not_dicom", _NO_PREAMBLE),
    "test_files/rtplan.dump": ("not_dicom", _NO_PREAMBLE),
    "test_files/rtstruct.dump": ("not_dicom", _NO_PREAMBLE),
    "test_files/test1.json": ("not_dicom", _NO_PREAMBLE),
    "test_files/test_PN.json": ("not_dicom", _NO_PREAMBLE),
    "test_files/zipMR.gz": ("not_dicom", _NO_PREAMBLE),
    "test_files/ExplVR_BigEndNoMeta.dcm": ("not_dicom", _NO_PREAMBLE),
    "test_files/ExplVR_LitEndNoMeta.dcm": ("not_dicom", _NO_PREAMBLE),
    "test_files/no_meta.dcm": ("not_dicom", _NO_PREAMBLE),
    "test_files/rtstruct.dcm": ("not_dicom", _NO_PREAMBLE),
    # a File Meta Information without TransferSyntaxUID
    "test_files/meta_missing_tsyntax.dcm": ("not_dicom", "no TransferSyntaxUID"),
    # declared lengths run past the end of the file (pydicom itself reads these silently short)
    "test_files/MR_truncated.dcm": ("malformed", "(7FE0,0010)"),
    "test_files/rtplan_truncated.dcm": ("malformed", "runs past the end of the file"),
    "test_files/dicomdirtests/DICOMDIR-nooffset": ("malformed", "runs past its container"),
    # NumberOfFrames "1A" cannot be converted (pydicom's own to_json_dict fails too)
    "test_files/badVR.dcm": ("malformed", "NumberOfFrames"),
    # File Meta MediaStorageSOPInstanceUID differs from the data set's SOPInstanceUID
    "charset_files/chrJapMulti.dcm": ("malformed", _MEDIA_MISMATCH),
    "charset_files/chrJapMultiExplicitIR6.dcm": ("malformed", _MEDIA_MISMATCH),
    "test_files/rtdose.dcm": ("malformed", _MEDIA_MISMATCH),
    "test_files/rtdose_1frame.dcm": ("malformed", _MEDIA_MISMATCH),
    "test_files/rtdose_expb.dcm": ("malformed", _MEDIA_MISMATCH),
    "test_files/rtdose_expb_1frame.dcm": ("malformed", _MEDIA_MISMATCH),
    "test_files/rtplan.dcm": ("malformed", _MEDIA_MISMATCH),
    # fragments of data sets (character set samples, DICOMDIRs, private sequence samples): no SOP UIDs
    "charset_files/chrSQEncoding.dcm": ("missing_attribute", "SOPClassUID"),
    "charset_files/chrSQEncoding1.dcm": ("missing_attribute", "SOPClassUID"),
    "test_files/UN_sequence.dcm": ("missing_attribute", "SOPClassUID"),
    "test_files/empty_charset_LEI.dcm": ("missing_attribute", "SOPClassUID"),
    "test_files/nested_priv_SQ.dcm": ("missing_attribute", "SOPClassUID"),
    "test_files/no_meta_group_length.dcm": ("missing_attribute", "SOPClassUID"),
    "test_files/priv_SQ.dcm": ("missing_attribute", "SOPClassUID"),
    "test_files/dicomdirtests/DICOMDIR": ("missing_attribute", "SOPClassUID"),
    "test_files/dicomdirtests/DICOMDIR-bigEnd": ("missing_attribute", "SOPClassUID"),
    "test_files/dicomdirtests/DICOMDIR-empty.dcm": ("missing_attribute", "SOPClassUID"),
    "test_files/dicomdirtests/DICOMDIR-implicit": ("missing_attribute", "SOPClassUID"),
    "test_files/dicomdirtests/DICOMDIR-nopatient": ("missing_attribute", "SOPClassUID"),
    "test_files/dicomdirtests/DICOMDIR-reordered": ("missing_attribute", "SOPClassUID"),
    "test_files/dicomdirtests/TINY_ALPHA/DICOMDIR": ("missing_attribute", "SOPClassUID"),
    # codec samples stripped of the identifying attributes
    "test_files/JPEGLSNearLossless_08.dcm": ("missing_attribute", "StudyInstanceUID"),
    "test_files/JPEGLSNearLossless_16.dcm": ("missing_attribute", "StudyInstanceUID"),
    "test_files/SC_rgb_jls_lossy_line.dcm": ("missing_attribute", "StudyInstanceUID"),
    "test_files/SC_rgb_jls_lossy_sample.dcm": ("missing_attribute", "StudyInstanceUID"),
    "test_files/GDCMJ2K_TextGBR.dcm": ("missing_attribute", "Modality"),
    "test_files/SC_jpeg_no_color_transform.dcm": ("missing_attribute", "Modality"),
    "test_files/SC_jpeg_no_color_transform_2.dcm": ("missing_attribute", "Modality"),
    "test_files/SC_rgb_jpeg_app14_dcmd.dcm": ("missing_attribute", "Modality"),
}
ACCEPTED_FILES = [name for name in ALL_FILES if name not in EXPECTED_REJECTIONS]


def parse(path: str | os.PathLike[str]) -> ParsedInstance | InstanceRejected:
    """parse_instance, returning the rejection instead of raising it (anything else propagates)."""
    try:
        return parse_instance(path)
    except InstanceRejected as exc:
        assert exc.code in CODES
        assert exc.reason
        return exc


_parsed_cache: dict[str, ParsedInstance | InstanceRejected] = {}


def parsed(name: str) -> ParsedInstance:
    if name not in _parsed_cache:
        _parsed_cache[name] = parse(DATA_ROOT / name)
    result = _parsed_cache[name]
    assert isinstance(result, ParsedInstance), f"{name}: {result}"
    return result


def full_read(path: str | os.PathLike[str]) -> pydicom.FileDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def bulk_prefix(result: ParsedInstance) -> str:
    return (
        f"/dicom-web/studies/{result.study_instance_uid}/series/{result.series_instance_uid}"
        f"/instances/{result.sop_instance_uid}/bulkdata/"
    )


def pydicom_json(path: str | os.PathLike[str], prefix: str) -> dict[str, Any]:
    """pydicom's own DICOM JSON of the whole file (group 0002 left out), with bulk data URIs
    following the bulkdata/{tag}/{item}/{tag} convention and pixel data always bulk."""
    ds = full_read(path)
    for tag in [tag for tag in ds.keys() if tag >> 16 == 0x0002]:  # noqa: SIM118 - iterating a Dataset yields elements
        del ds[tag]
    paths: dict[int, str] = {}

    def collect(dataset: Dataset, base: str) -> None:
        for tag in dataset.keys():  # noqa: SIM118 - iterating a Dataset yields elements
            elem = dataset[tag]
            paths[id(elem)] = f"{base}{tag:08X}"
            if elem.VR == "SQ":
                for index, item in enumerate(elem.value):
                    collect(item, f"{base}{tag:08X}/{index}/")

    collect(ds, "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        document = ds.to_json_dict(
            bulk_data_threshold=1024, bulk_data_element_handler=lambda elem: prefix + paths[id(elem)]
        )

    def pixel_as_bulk(obj: dict[str, Any], base: str) -> None:
        for key, value in obj.items():
            if key in PIXEL_KEYS and "InlineBinary" in value:
                del value["InlineBinary"]
                value["BulkDataURI"] = f"{prefix}{base}{key}"
            if value.get("vr") == "SQ":
                for index, item in enumerate(value.get("Value", [])):
                    pixel_as_bulk(item, f"{base}{key}/{index}/")

    pixel_as_bulk(document, "")
    return document


def file_bytes(path: str | os.PathLike[str], ranges: list[tuple[int, int]]) -> bytes:
    with open(path, "rb") as f:
        chunks = []
        for offset, length in ranges:
            f.seek(offset)
            chunk = f.read(length)
            assert len(chunk) == length
            chunks.append(chunk)
    return b"".join(chunks)


def pixel_value(ds: Dataset) -> bytes:
    for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        if tag in ds:
            return ds[tag].value
    raise AssertionError("no pixel data")


def check_frames(path: str | os.PathLike[str], result: ParsedInstance) -> int:
    """The bytes at frame_ranges(n) are pydicom's frame n; returns the number of frames."""
    index = result.pixel
    assert index is not None
    ds = full_read(path)
    data = pixel_value(ds)
    frames = index.number_of_frames
    assert frames == result.instance["number_of_frames"]
    if index.encapsulated:
        expected = list(generate_frames(data, number_of_frames=frames, endianness=">" if index.big_endian else "<"))
        assert len(expected) == frames
        for number in range(1, frames + 1):
            assert file_bytes(path, index.frame_ranges(number)) == expected[number - 1]
    elif index.frame_length == 0:
        with pytest.raises(ValueError):
            index.frame_ranges(1)
    else:
        assert index.length == len(data)
        size = index.frame_length
        for number in range(1, frames + 1):
            assert file_bytes(path, index.frame_ranges(number)) == data[(number - 1) * size : number * size]
    for out_of_range in (0, -1, frames + 1):
        with pytest.raises(IndexError):
            index.frame_ranges(out_of_range)
    return frames


# --------------------------------------------------------------------------- pydicom's test data


def test_test_data_is_there() -> None:
    assert len(ALL_FILES) > 150
    missing = set(EXPECTED_REJECTIONS) - set(ALL_FILES)
    assert not missing, f"listed rejections that are not shipped: {missing}"


@pytest.mark.parametrize("name", ALL_FILES)
def test_every_pydicom_file_is_accepted_or_rejected_as_expected(name: str) -> None:
    started = time.perf_counter()
    result = parse(DATA_ROOT / name)
    assert time.perf_counter() - started < 2
    if name in EXPECTED_REJECTIONS:
        code, fragment = EXPECTED_REJECTIONS[name]
        assert isinstance(result, InstanceRejected), f"{name} was accepted"
        assert (result.code, fragment in result.reason) == (code, True), result.reason
        return
    assert isinstance(result, ParsedInstance), f"{name}: {result}"
    _parsed_cache[name] = result


@pytest.mark.parametrize("name", ACCEPTED_FILES)
def test_metadata_is_pydicoms_dicom_json(name: str) -> None:
    result = parsed(name)
    path = DATA_ROOT / name
    document = json.loads(result.metadata)
    assert isinstance(document, dict)
    assert document == pydicom_json(path, bulk_prefix(result))
    assert not [key for key in document if key.startswith("0002")]
    assert list(document) == sorted(document)
    # the subsets are made of the same entries
    for key, value in {**result.study_attributes, **result.series_attributes}.items():
        assert document[key] == value
        assert "BulkDataURI" not in value or key not in result.study_attributes
    assert "0020000D" in result.study_attributes
    assert "0020000E" in result.series_attributes and "00080060" in result.series_attributes
    assert not set(result.study_attributes) & set(result.series_attributes)
    patient_module = {
        key
        for key, value in document.items()
        if key.startswith("0010") and key not in ("00100000", "00102210") and "BulkDataURI" not in value
    }
    assert patient_module <= set(result.study_attributes)


@pytest.mark.parametrize("name", ACCEPTED_FILES)
def test_columns_match_pydicom(name: str) -> None:
    result = parsed(name)
    ds = full_read(DATA_ROOT / name)
    assert result.sop_class_uid == ds.SOPClassUID
    assert result.sop_instance_uid == ds.SOPInstanceUID
    assert result.study_instance_uid == ds.StudyInstanceUID
    assert result.series_instance_uid == ds.SeriesInstanceUID
    assert result.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert result.series["modality"] == ds.Modality
    if ds.get("PatientID"):
        assert result.study["patient_id_in_file"] == ds.PatientID.strip()
    if ds.get("Rows") is not None:
        assert result.instance["rows"] == ds.Rows
    key = result.study["patient_name_key"]
    assert key is None or (key == key.strip() and "  " not in key and "^" not in key and key == key.lower())
    json.dumps(result.study, default=str)
    json.dumps(result.instance)
    has_pixels = any(tag in ds for tag in PIXEL_TAGS)
    if result.transfer_syntax_uid == DeflatedExplicitVRLittleEndian or not has_pixels:
        assert result.pixel is None
    else:
        assert result.pixel is not None
        assert result.pixel.big_endian == (result.transfer_syntax_uid == ExplicitVRBigEndian)


def test_ct_small_columns() -> None:
    result = parsed("test_files/CT_small.dcm")
    assert result.study == {
        "patient_id_in_file": "1CT1",
        "patient_name_in_file": "CompressedSamples^CT1",
        "patient_name_key": "compressedsamples ct1",
        "patient_birth_date": None,
        "patient_sex": "O",
        "accession_number": None,
        "study_id_tag": "1CT1",
        "study_date": date(2004, 1, 19),
        "study_time": "072730",
        "study_description": "e+1",
        "referring_physician_name": None,
    }
    assert result.series["modality"] == "CT"
    assert result.series["series_number"] == 1
    assert result.instance == {
        "instance_number": 1,
        "number_of_frames": 1,
        "rows": 128,
        "columns": 128,
        "bits_allocated": 16,
        "photometric_interpretation": "MONOCHROME2",
    }
    assert result.specific_character_set == "ISO_IR 100"
    assert result.pixel == PixelIndex(
        offset=result.pixel.offset if result.pixel else -1,
        length=32768,
        encapsulated=False,
        number_of_frames=1,
        frame_length=32768,
        frames=(),
        big_endian=False,
    )
    document = json.loads(result.metadata)
    assert document["7FE00010"] == {"vr": "OW", "BulkDataURI": bulk_prefix(result) + "7FE00010"}
    assert document["00431029"]["BulkDataURI"].endswith("/bulkdata/00431029")  # private OB > 768 bytes
    assert "FFFCFFFC" in document  # trailing padding after the pixel data is read too


def test_charset_names() -> None:
    german = parsed("charset_files/chrGerm.dcm")
    assert german.study["patient_name_in_file"] == "Äneas^Rüdiger"
    assert german.study["patient_name_key"] == "aneas rudiger"
    assert german.study["referring_physician_name"] is None  # "^^^^"
    japanese = parsed("charset_files/chrH32.dcm")
    assert japanese.study["patient_name_key"] == "ヤマダ タロウ 山田 太郎 やまだ たろう"
    assert japanese.specific_character_set == "ISO 2022 IR 13\\ISO 2022 IR 87"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Doe^John", "doe john"),
        ("Müller^Jürgen", "muller jurgen"),
        ("  DOE ^ JOHN ^^^", "doe john"),
        ("Ｄｏｅ^Ｊｏｈｎ", "doe john"),  # full-width forms
        ("Ĳssel^İlkay", "ijssel ilkay"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "yamada tarou 山田 太郎 やまだ たろう"),
        ("が^ガ", "が ガ"),  # kana voicing marks are not accents
        ("Wang^XiaoDong=王^小東=", "wang xiaodong 王 小東"),
        ("Łukasz^Øster", "łukasz øster"),
    ],
)
def test_name_key(text: str, key: str) -> None:
    assert name_key(text) == key


# --------------------------------------------------------------------------- frames


def repaired_copy(tmp_path: Path, name: str) -> Path:
    """rtdose*.dcm carry a MediaStorageSOPInstanceUID differing from SOPInstanceUID in one
    digit; patch the File Meta copy (same length) so that they are accepted."""
    target = tmp_path / Path(name).name
    data = (DATA_ROOT / name).read_bytes()
    meta_uid, real_uid = b"1.2.999.999.99.9.9999.9999.20030818153516", b"1.9.999.999.99.9.9999.9999.20030818153516"
    assert data.count(meta_uid) == 1
    target.write_bytes(data.replace(meta_uid, real_uid))
    return target


@pytest.mark.parametrize("name", [name for name in ACCEPTED_FILES if "dicomdirtests" not in name])
def test_frame_ranges_are_pydicoms_frames(name: str) -> None:
    result = parsed(name)
    if result.pixel is None:
        return
    check_frames(DATA_ROOT / name, result)


def test_frame_kinds_covered() -> None:
    kinds = set()
    for name in ACCEPTED_FILES:
        index = parsed(name).pixel
        if index is not None:
            kinds.add((index.encapsulated, index.number_of_frames > 1, index.big_endian))
    assert (False, False, False) in kinds and (False, False, True) in kinds
    assert (True, False, False) in kinds and (True, True, False) in kinds
    multi = {name for name in ACCEPTED_FILES if (parsed(name).instance["number_of_frames"] > 1)}
    assert {
        "test_files/examples_ybr_color.dcm",
        "test_files/rtdose_rle.dcm",
        "test_files/SC_rgb_rle_2frame.dcm",
    } <= multi


@pytest.mark.parametrize(
    ("name", "frames", "big_endian"),
    [
        ("test_files/rtdose.dcm", 15, False),
        ("test_files/rtdose_expb.dcm", 15, True),
        ("test_files/rtdose_1frame.dcm", 1, False),
    ],
)
def test_native_multi_frame(tmp_path: Path, name: str, frames: int, big_endian: bool) -> None:
    path = repaired_copy(tmp_path, name)
    result = parse_instance(path)
    assert result.pixel is not None and not result.pixel.encapsulated
    assert result.pixel.big_endian is big_endian
    assert result.pixel.frame_length == 10 * 10 * 4  # 10x10, 32 bits
    assert check_frames(path, result) == frames
    assert json.loads(result.metadata) == pydicom_json(path, bulk_prefix(result))


def jpeg_frames() -> list[bytes]:
    ds = full_read(DATA_ROOT / "test_files/examples_ybr_color.dcm")
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))


def rewrite_pixels(
    tmp_path: Path, name: str, pixel_data: bytes, transfer_syntax: str | None = None, **extra: bytes
) -> Path:
    ds = full_read(DATA_ROOT / "test_files/examples_ybr_color.dcm")
    if transfer_syntax:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = pixel_data
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("with_bot", [True, False])
def test_encapsulated_several_fragments_per_frame(tmp_path: Path, with_bot: bool) -> None:
    """Three fragments per frame: found through the Basic Offset Table, or else by the JPEG
    end-of-image markers."""
    frames = jpeg_frames()
    path = rewrite_pixels(tmp_path, "split.dcm", encapsulate(frames, fragments_per_frame=3, has_bot=with_bot))
    result = parse_instance(path)
    assert result.pixel is not None and result.pixel.encapsulated
    assert result.pixel.number_of_frames == len(frames) == 30
    for number, frame in enumerate(frames, start=1):
        ranges = result.pixel.frame_ranges(number)
        assert len(ranges) == 3
        assert file_bytes(path, ranges) == frame


def test_encapsulated_extended_offset_table(tmp_path: Path) -> None:
    frames = jpeg_frames()
    # odd-length frames are padded in their fragment; the table's lengths exclude the pad byte
    frames = [frame + b"\x00\x00\x00" if number % 2 else frame for number, frame in enumerate(frames)]
    data, offsets, _padded_lengths = encapsulate_extended(frames)
    lengths = struct.pack(f"<{len(frames)}Q", *(len(frame) for frame in frames))
    assert any(len(frame) % 2 for frame in frames)
    path = rewrite_pixels(tmp_path, "eot.dcm", data, ExtendedOffsetTable=offsets, ExtendedOffsetTableLengths=lengths)
    result = parse_instance(path)
    assert result.pixel is not None
    for number, frame in enumerate(frames, start=1):
        assert file_bytes(path, result.pixel.frame_ranges(number)) == frame


def test_encapsulated_frames_that_cannot_be_found(tmp_path: Path) -> None:
    frames = jpeg_frames()
    data = encapsulate([frame[:-2] for frame in frames], fragments_per_frame=2, has_bot=False)  # no EOI markers
    path = rewrite_pixels(tmp_path, "noeoi.dcm", data)
    with pytest.raises(InstanceRejected) as caught:
        parse_instance(path)
    assert caught.value.code == "malformed"
    assert caught.value.sop_instance_uid == full_read(path).SOPInstanceUID
    path = rewrite_pixels(tmp_path, "few.dcm", encapsulate(frames[:10], has_bot=False))  # 10 fragments, 30 frames
    assert parse_instance_code(path) == "malformed"


def test_video_is_one_stream(tmp_path: Path) -> None:
    """MPEG-4: 30 frames in one stream of 4 fragments; the stream is indexed as a whole."""
    stream = b"".join(jpeg_frames())
    fragments = [stream[i : i + len(stream) // 4 + 1] for i in range(0, len(stream), len(stream) // 4 + 1)]
    data = encapsulate([b"".join(fragments)], fragments_per_frame=len(fragments), has_bot=False)
    path = rewrite_pixels(tmp_path, "video.dcm", data, transfer_syntax=MPEG4HP41)
    result = parse_instance(path)
    index = result.pixel
    assert index is not None and index.encapsulated
    assert index.number_of_frames == 30 and len(index.frames) == 1
    assert file_bytes(path, list(index.frames[0])) == stream + b"\x00" * (len(stream) % 2)
    with pytest.raises(ValueError):
        index.frame_ranges(1)
    with pytest.raises(IndexError):
        index.frame_ranges(31)
    assert PixelIndex.from_json(json.loads(json.dumps(index.to_json()))) == index


def test_pixel_index_json_roundtrip() -> None:
    seen = 0
    for name in ACCEPTED_FILES:
        index = parsed(name).pixel
        if index is None:
            continue
        stored = json.loads(json.dumps(index.to_json()))
        assert PixelIndex.from_json(stored) == index
        seen += 1
    assert seen > 50
    with pytest.raises(ValueError):
        PixelIndex.from_json({"offset": "1"})
    with pytest.raises(ValueError):
        PixelIndex.from_json(
            {**PixelIndex(1, None, True, 2, 0, (((1, 2),), ((3, 4),)), False).to_json(), "number_of_frames": 3}
        )
    with pytest.raises(ValueError):
        PixelIndex.from_json({**PixelIndex(1, 8, False, 1, 8, (), False).to_json(), "frames": [[1]]})


# --------------------------------------------------------------------------- rules 1 and 2 on made-up files


def base_dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.Modality = "OT"
    ds.PatientName = "Doe^John"
    ds.PatientID = "P1"
    ds.StudyDate = "20240230"  # not a date
    ds.SeriesDate = "2024.02.01"  # ACR-NEMA style
    ds.SeriesNumber = "99999999999"  # outside int4
    ds.InstanceNumber = "7"
    return ds


def write(tmp_path: Path, ds: Dataset, name: str = "made.dcm", transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or "1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or "1.2.3.4.5.6"
    path = tmp_path / name
    with pydicom_config.disable_value_validation():
        ds.save_as(path, enforce_file_format=True)
    return path


def parse_instance_code(path: Path) -> str:
    result = parse(path)
    return "accepted" if isinstance(result, ParsedInstance) else result.code


def test_made_up_file_columns(tmp_path: Path) -> None:
    result = parse_instance(write(tmp_path, base_dataset()))
    assert result.study["study_date"] is None
    assert result.series["series_date"] == date(2024, 2, 1)
    assert result.series["series_number"] is None
    assert result.instance["instance_number"] == 7
    assert result.instance["number_of_frames"] == 1
    assert result.pixel is None
    assert result.specific_character_set is None
    assert result.study_attributes["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}


@pytest.mark.parametrize(
    "keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"]
)
@pytest.mark.parametrize("empty", [True, False])
def test_missing_attribute(tmp_path: Path, keyword: str, empty: bool) -> None:
    ds = base_dataset()
    if empty:
        setattr(ds, keyword, "")
    else:
        delattr(ds, keyword)
    with pytest.raises(InstanceRejected) as caught:
        parse_instance(write(tmp_path, ds))
    assert caught.value.code == "missing_attribute"
    assert keyword in caught.value.reason
    if keyword != "SOPInstanceUID":
        assert caught.value.sop_instance_uid == "1.2.3.4.5.6"


@pytest.mark.parametrize(
    ("uid", "code"),
    [
        ("1.2.3", "accepted"),
        ("1.02.003", "accepted"),  # leading zeros are tolerated
        ("1." + "2" * 62, "accepted"),  # 64 characters
        ("1." + "2" * 63, "invalid_uid"),  # 65
        ("1..2", "invalid_uid"),
        (".1.2", "invalid_uid"),
        ("1.2.", "invalid_uid"),
        ("1.2.a", "invalid_uid"),
        ("1.2 .3", "invalid_uid"),
        ("1.2\\1.3", "invalid_uid"),  # two values
    ],
)
@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"])
def test_uid_syntax(tmp_path: Path, uid: str, code: str, keyword: str) -> None:
    ds = base_dataset()
    setattr(ds, keyword, uid)
    path = write(tmp_path, ds)
    assert parse_instance_code(path) == code
    if code == "invalid_uid":
        with pytest.raises(InstanceRejected) as caught:
            parse_instance(path)
        assert keyword in caught.value.reason


def test_media_storage_mismatch(tmp_path: Path) -> None:
    path = write(tmp_path, base_dataset())
    data = path.read_bytes()
    patched = data.replace(b"1.2.3.4.5.6\x00", b"1.2.3.4.5.7\x00", 1)  # the File Meta copy comes first
    path.write_bytes(patched)
    with pytest.raises(InstanceRejected) as caught:
        parse_instance(path)
    assert caught.value.code == "malformed" and "MediaStorageSOPInstanceUID" in caught.value.reason


def test_transfer_syntax_uid_must_be_a_uid(tmp_path: Path) -> None:
    path = write(tmp_path, base_dataset())
    data = path.read_bytes()
    assert data.count(b"1.2.840.10008.1.2.1\x00") == 1
    path.write_bytes(data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.x\x00"))
    with pytest.raises(InstanceRejected) as caught:
        parse_instance(path)
    assert caught.value.code == "invalid_uid" and "TransferSyntaxUID" in caught.value.reason


@pytest.mark.parametrize(
    "transfer_syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
)
def test_transfer_syntaxes_made_up(tmp_path: Path, transfer_syntax: str) -> None:
    ds = base_dataset()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.NumberOfFrames = 2
    ds.PixelData = bytes(range(64))
    path = write(tmp_path, ds, transfer_syntax=transfer_syntax)
    result = parse_instance(path)
    assert json.loads(result.metadata) == pydicom_json(path, bulk_prefix(result))
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        assert result.pixel is None
    else:
        assert result.pixel is not None and result.pixel.frame_length == 32
        assert check_frames(path, result) == 2


def test_native_pixel_data_too_short(tmp_path: Path) -> None:
    ds = base_dataset()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 4, 4, 16, 1
    ds.NumberOfFrames = 3
    ds.PixelData = bytes(64)  # 2 frames only
    assert parse_instance_code(write(tmp_path, ds)) == "malformed"


def test_unaligned_single_bit_frames(tmp_path: Path) -> None:
    ds = base_dataset()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 3, 3, 1, 1
    ds.NumberOfFrames = 3
    ds.PixelData = bytes(4)  # 27 bits
    result = parse_instance(write(tmp_path, ds))
    assert result.pixel is not None and result.pixel.frame_length == 0
    with pytest.raises(ValueError):
        result.pixel.frame_ranges(1)
    with pytest.raises(IndexError):
        result.pixel.frame_ranges(4)


def test_float_pixel_data(tmp_path: Path) -> None:
    ds = base_dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 2, 3, 1
    ds.NumberOfFrames = 2
    ds.FloatPixelData = struct.pack("<12f", *range(12))
    path = write(tmp_path, ds)
    result = parse_instance(path)
    assert result.pixel is not None and result.pixel.frame_length == 24
    assert json.loads(result.metadata)["7FE00008"]["vr"] == "OF"
    assert check_frames(path, result) == 2


def nested_dataset(depth: int) -> Dataset:
    ds = base_dataset()
    inner = Dataset()
    inner.add_new(0x00091010, "OB", bytes(2000))  # bulk at the bottom
    inner.add_new(0x00091011, "OB", b"ab")  # inline
    inner.add_new(0x00090010, "LO", "CREATOR")
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = Sequence([Dataset(), inner])
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    return ds


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_nested_bulk_data_paths(tmp_path: Path, transfer_syntax: str) -> None:
    depth = 20
    path = write(tmp_path, nested_dataset(depth), transfer_syntax=transfer_syntax)
    result = parse_instance(path)
    document = json.loads(result.metadata)
    assert document == pydicom_json(path, bulk_prefix(result))
    node = document
    for _ in range(depth):
        node = node["0040A730"]["Value"][1]
    assert node["00091010"]["BulkDataURI"] == bulk_prefix(result) + "0040A730/1/" * depth + "00091010"
    assert "InlineBinary" in node["00091011"]


# --------------------------------------------------------------------------- hostile input


def expect_fast_rejection(path: Path, *codes: str, seconds: float = 2.0) -> InstanceRejected:
    started = time.perf_counter()
    result = parse(path)
    assert time.perf_counter() - started < seconds
    assert isinstance(result, InstanceRejected), "accepted"
    if codes:
        assert result.code in codes, result.reason
    return result


def raw_element(tag: int, vr: bytes, value: bytes, *, long: bool) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if long:
        return struct.pack("<HH2sHL", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def deep_sequence(depth: int, *, undefined: bool) -> bytes:
    inner = raw_element(0x00100010, b"PN", b"Doe^", long=False)
    for _ in range(depth):
        if undefined:
            item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
            inner = (
                struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
                + item
                + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
            )
        else:
            item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
            inner = struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, len(item)) + item
    return inner


@pytest.mark.parametrize("undefined", [True, False])
def test_deeply_nested_sequences(tmp_path: Path, undefined: bool) -> None:
    base = write(tmp_path, base_dataset()).read_bytes()
    path = tmp_path / "deep.dcm"
    path.write_bytes(base + deep_sequence(5000, undefined=undefined))
    rejection = expect_fast_rejection(path, "malformed")
    assert "nested" in rejection.reason
    assert rejection.sop_instance_uid == "1.2.3.4.5.6"  # known from the walk, before the parse
    # still parsed right at the allowed depth
    path.write_bytes(base + deep_sequence(MAX_NESTING_DEPTH, undefined=undefined))
    result = parse_instance(path)
    assert json.loads(result.metadata) == pydicom_json(path, bulk_prefix(result))


def test_nested_unknown_sequence_inside_un_value(tmp_path: Path) -> None:
    """A defined-length UN value (opaque to the walker) holding a deep sequence: pydicom parses
    it when converting; its RecursionError must come out as a rejection."""
    base = write(tmp_path, base_dataset()).read_bytes()
    nested = deep_sequence(3000, undefined=False)
    # (0040,A730) ContentSequence written with VR UN: pydicom replaces UN by the known VR SQ
    value = nested[12:]
    element = struct.pack("<HH2sHL", 0x0040, 0xA730, b"UN", 0, len(value)) + value
    path = tmp_path / "un.dcm"
    path.write_bytes(base + element)
    expect_fast_rejection(path, "malformed", seconds=5)


def test_not_dicom_inputs(tmp_path: Path) -> None:
    cases = {
        "empty": b"",
        "short": b"DICM",
        "text": b"hello world\n" * 100,
        "dicm_only": bytes(128) + b"DICM",
        "dicm_garbage": bytes(128) + b"DICM" + bytes(random.Random(1).randrange(256) for _ in range(4000)),
        "dicm_zeros": bytes(128) + b"DICM" + bytes(1000),
        "no_preamble": b"DICM" + bytes(200),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        expect_fast_rejection(path, "not_dicom", "malformed")
    assert expect_fast_rejection(tmp_path / "missing.dcm").code == "not_dicom"
    assert expect_fast_rejection(tmp_path).code == "not_dicom"  # a directory


def test_huge_declared_lengths_allocate_nothing(tmp_path: Path) -> None:
    """A File Meta element or a data set element claiming ~4 GiB fails fast."""
    base = write(tmp_path, base_dataset()).read_bytes()
    for tail in (
        struct.pack("<HH2sHL", 0x0009, 0x1010, b"OB", 0, 0xFFFFFFF0) + b"x" * 100,
        struct.pack("<HHL", 0x0009, 0x1010, 0xFFFFFFF0) + b"x" * 100,  # implicit-looking element
        struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, 0xFFFFFFF0) + b"x" * 100,
        struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
        + struct.pack("<HHL", 0xFFFE, 0xE000, 0)
        + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFF00),
    ):
        path = tmp_path / "huge.dcm"
        path.write_bytes(base + tail)
        expect_fast_rejection(path, "malformed", seconds=1)
    meta_bomb = bytes(128) + b"DICM" + struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 0xFFFFFFF0) + b"\x00\x01"
    path = tmp_path / "meta.dcm"
    path.write_bytes(meta_bomb)
    expect_fast_rejection(path, "malformed", seconds=1)


def test_many_tiny_elements(tmp_path: Path) -> None:
    """A small file made of ~120,000 tiny elements would cost pydicom ~100 times its size."""
    base = write(tmp_path, base_dataset()).read_bytes()
    body = b"".join(
        struct.pack("<HH2sH", group, element, b"LO", 2) + b"ab"
        for group in range(0x0011, 0x0011 + 2 * 480, 2)
        for element in range(0x1000, 0x1000 + 250)
    )
    path = tmp_path / "tiny.dcm"
    path.write_bytes(base + body)
    rejection = expect_fast_rejection(path, "malformed", seconds=1)
    assert "data elements" in rejection.reason


def test_deflate_bomb(tmp_path: Path) -> None:
    path = write(tmp_path, base_dataset(), transfer_syntax=DeflatedExplicitVRLittleEndian)
    data = path.read_bytes()
    meta = full_read(path).file_meta
    meta_length = 132 + 12 + meta.FileMetaInformationGroupLength
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    element = struct.pack("<HH2sHL", 0x0009, 0x1010, b"OB", 0, 64 * 1024 * 1024)
    chunks = [compressor.compress(element)]
    zeros = bytes(1024 * 1024)
    chunks += [compressor.compress(zeros) for _ in range(64)]
    chunks.append(compressor.flush())
    path.write_bytes(data[:meta_length] + b"".join(chunks))
    rejection = expect_fast_rejection(path, "malformed")
    assert "inflates to more than" in rejection.reason
    # a truncated deflate stream
    original = zlib.decompress(data[meta_length:], -zlib.MAX_WBITS)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = compressor.compress(original) + compressor.flush()
    path.write_bytes(data[:meta_length] + stream[:-5])
    expect_fast_rejection(path, "malformed")


HOSTILE_SOURCES = [
    "test_files/CT_small.dcm",
    "test_files/MR_small_implicit.dcm",
    "test_files/MR_small_expb.dcm",
    "test_files/MR_small_RLE.dcm",
    "test_files/JPEG2000.dcm",
    "test_files/test-SR.dcm",
    "test_files/SC_rgb_rle_2frame.dcm",
    "charset_files/chrH31.dcm",
]


def top_level_boundaries(path: Path) -> set[int]:
    """Offsets where a top-level element ends, found by pydicom's element generator."""
    ds = full_read(path)
    ts = ds.file_meta.TransferSyntaxUID
    boundaries = {132}
    with open(path, "rb") as f:
        f.seek(132)
        for _elem in data_element_generator(f, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2):
            boundaries.add(f.tell())
        for _elem in data_element_generator(f, ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian):
            boundaries.add(f.tell())
    return boundaries


@pytest.mark.parametrize("name", HOSTILE_SOURCES)
def test_truncations(tmp_path: Path, name: str) -> None:
    source = DATA_ROOT / name
    data = source.read_bytes()
    assert isinstance(parse(source), ParsedInstance)
    boundaries = top_level_boundaries(source)
    rng = random.Random(name)
    cuts = set(range(0, min(len(data), 600), 7)) | {rng.randrange(len(data)) for _ in range(60)}
    cuts |= {b + d for b in boundaries for d in (-1, 1) if 0 < b + d < len(data)}
    path = tmp_path / "cut.dcm"
    started = time.perf_counter()
    for cut in sorted(cuts):
        path.write_bytes(data[:cut])
        result = parse(path)
        if isinstance(result, ParsedInstance):
            # only a cut between two top-level elements makes a (shorter) valid file
            assert cut in boundaries, f"cut at {cut} accepted"
            assert result.pixel is None or cut > result.pixel.offset
        elif cut > 132 and cut not in boundaries:
            assert result.code in ("malformed", "not_dicom", "missing_attribute"), (cut, result.reason)
    assert time.perf_counter() - started < 6


def mutations(data: bytes, rng: random.Random, count: int) -> Iterator[bytes]:
    for _ in range(count):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(132, len(data)) if rng.random() < 0.9 else rng.randrange(len(data))
            mutated[position] = rng.randrange(256) if rng.random() < 0.5 else mutated[position] ^ 0xFF
        yield bytes(mutated)


@pytest.mark.parametrize("name", HOSTILE_SOURCES)
def test_random_byte_flips(tmp_path: Path, name: str) -> None:
    data = (DATA_ROOT / name).read_bytes()
    # flips in the header matter most: mutate the part before the pixel data more often
    result = parsed(name)
    header_end = result.pixel.offset if result.pixel else len(data)
    rng = random.Random(f"flips:{name}")
    path = tmp_path / "flipped.dcm"
    started = time.perf_counter()
    outcomes: dict[str, int] = {}
    for mutated in mutations(data[:header_end], rng, 120):
        path.write_bytes(mutated + data[header_end:])
        outcome = parse(path)
        key = "accepted" if isinstance(outcome, ParsedInstance) else outcome.code
        outcomes[key] = outcomes.get(key, 0) + 1
    assert time.perf_counter() - started < 8
    assert outcomes.get("malformed", 0) > 0


LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def length_fields(path: Path) -> Iterator[tuple[int, int, int]]:
    """(offset of the length field, its size in bytes, value offset) of every top-level element
    and of every element one level down in sequences, per pydicom."""
    ds = full_read(path)
    ts = ds.file_meta.TransferSyntaxUID
    implicit = ts == ImplicitVRLittleEndian

    def fields(elements: Any, is_implicit: bool) -> Iterator[tuple[int, int, int]]:
        for elem in elements:
            tell = elem.value_tell
            vr = elem.VR
            if is_implicit or vr is None or vr in LONG_LENGTH_VRS:
                yield tell - 4, 4, tell
            else:
                yield tell - 2, 2, tell

    with open(path, "rb") as f:
        f.seek(132)
        yield from fields(data_element_generator(f, False, True, stop_when=lambda t, v, n: t >> 16 != 2), False)
        yield from fields(data_element_generator(f, implicit, True), implicit)


@pytest.mark.parametrize(
    "name", ["test_files/CT_small.dcm", "test_files/MR_small_implicit.dcm", "test_files/test-SR.dcm"]
)
def test_inflated_lengths(tmp_path: Path, name: str) -> None:
    source = DATA_ROOT / name
    data = source.read_bytes()
    path = tmp_path / "inflated.dcm"
    checked = 0
    for offset, size, value_offset in length_fields(source):
        fmt = "<L" if size == 4 else "<H"
        (length,) = struct.unpack(fmt, data[offset : offset + size])
        if length == 0xFFFFFFFF:
            continue
        new_length = len(data) - value_offset + 1 + (len(data) - value_offset) % 2
        if new_length >= (1 << (8 * size)) - 1:
            continue
        path.write_bytes(data[:offset] + struct.pack(fmt, new_length) + data[offset + size :])
        rejection = expect_fast_rejection(path)
        assert rejection.code in ("malformed", "not_dicom"), rejection.reason
        checked += 1
    assert checked > 20


def test_garbage_after_dicm_is_fast(tmp_path: Path) -> None:
    rng = random.Random(7)
    path = tmp_path / "noise.dcm"
    for _ in range(40):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000)))
        meta = raw_element(0x00020010, b"UI", b"1.2.840.10008.1.2.1\x00", long=False) if rng.random() < 0.7 else b""
        path.write_bytes(bytes(128) + b"DICM" + meta + body)
        expect_fast_rejection(path)


def test_rejection_pickles() -> None:
    import pickle

    rejection = InstanceRejected("malformed", "why", sop_instance_uid="1.2")
    copy = pickle.loads(pickle.dumps(rejection))
    assert (copy.code, copy.reason, copy.sop_instance_uid, copy.sop_class_uid) == ("malformed", "why", "1.2", None)
    with pytest.raises(ValueError):
        InstanceRejected("nope", "x")


def test_copied_file_is_self_contained(tmp_path: Path) -> None:
    """Offsets are absolute file offsets: a copy indexes to the same ranges."""
    source = DATA_ROOT / "test_files/examples_ybr_color.dcm"
    target = tmp_path / "copy.dcm"
    shutil.copyfile(source, target)
    assert parse_instance(target).pixel == parsed("test_files/examples_ybr_color.dcm").pixel
