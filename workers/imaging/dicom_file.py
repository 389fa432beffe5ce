"""Parse one DICOM PS3.10 file for the imaging index, never trusting it.

`parse_instance` reads the header of a file already saved on local disk, validates it and
returns everything the index and DICOMweb (PS3.18) need: the identifying UIDs, the study /
series / instance columns, the DICOM JSON of the whole data set (bulk data as
`BulkDataURI`s), the study- and series-level attribute subsets used by QIDO-RS, and a
`PixelIndex` locating every frame's bytes in the file, so that frames are served later by
seek + read without decoding anything.

Hostile and broken files are normal input. Anything wrong ends in `InstanceRejected` with one
of four codes; no other exception leaves `parse_instance` (except KeyboardInterrupt and
SystemExit). How:

* Before pydicom sees the file, `_Walker` walks its whole structure with small seek/reads only
  (element and item headers, a few short values): it checks that every declared length stays
  inside the file and inside its enclosing item/sequence, that sequences are closed, bounds
  the nesting depth, the element count and the fragment count, locates the top-level pixel
  data element and records its fragments. It follows the same encoding heuristics as
  pydicom's reader (implicit/explicit VR switches, UN with undefined length read as a
  sequence, ...), so both see the same elements.
* pydicom then parses the header (`stop_before_pixels=True`) through a reader that never hands
  out more bytes than the file has, and every element is converted (building the DICOM JSON)
  inside the same guard, so a bad value deep inside a sequence is caught here too.
* Elements after the pixel data (e.g. Data Set Trailing Padding) are read too, so that the
  DICOM JSON is that of the whole data set. Binary values become bulk data by pydicom's rule
  for bulk_data_threshold=1024 (base64 form longer than 1024, i.e. more than 768 bytes); pixel
  data always does.
* The Deflated Explicit VR Little Endian transfer syntax is inflated here with a size cap
  (pydicom would inflate without limit) and parsed from memory; it has no pixel index.

The work per file is bounded by the file's size: nothing is read past its end, the inflated
data set is capped, and the element, fragment and nesting counts are capped.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import struct
import unicodedata
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, BinaryIO, cast

from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator, dcmread, read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, MPEGTransferSyntaxes
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR, PersonName

from contracts.pixel_index import PixelIndex

__all__ = [
    "InstanceRejected",
    "ParsedInstance",
    "PixelIndex",
    "name_key",
    "parse_instance",
]

# --------------------------------------------------------------------------- limits

MAX_NESTING_DEPTH = 64
"""Sequences nested deeper than this are rejected (pydicom itself recurses ~4 frames a level)."""
MAX_ELEMENTS = 2_000_000
ELEMENTS_FREE = 100_000
BYTES_PER_ELEMENT = 32
"""Data elements + sequence items allowed in one file: max(ELEMENTS_FREE, size / BYTES_PER_ELEMENT),
at most MAX_ELEMENTS. pydicom keeps ~1 KiB of Python objects per element, so a file made of tiny
elements would otherwise cost ~100 times its size in memory."""
MAX_FRAGMENTS = 1 << 18
"""Items of one encapsulated value (Basic Offset Table included)."""
DEFLATE_MAX_RATIO = 100
DEFLATE_MIN_CAP = 8 * 1024 * 1024
"""A deflated data set may inflate to max(DEFLATE_MIN_CAP, DEFLATE_MAX_RATIO x compressed size)."""
BULK_DATA_THRESHOLD = 1024
"""Passed to pydicom: binary values whose base64 form exceeds this (> 768 bytes) become bulk data."""

_INT32_MAX = 2**31 - 1
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = 0x7FE00008
_DOUBLE_PIXEL_DATA = 0x7FE00009
_PIXEL_TAGS = frozenset({_FLOAT_PIXEL_DATA, _DOUBLE_PIXEL_DATA, _PIXEL_DATA})
_PIXEL_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_EXTENDED_OFFSET_TABLE = 0x7FE00001
_EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002

_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
_NATIVE_TRANSFER_SYNTAXES = frozenset({_IMPLICIT_VR_LITTLE_ENDIAN, _EXPLICIT_VR_LITTLE_ENDIAN, _EXPLICIT_VR_BIG_ENDIAN})

_KNOWN_VRS = frozenset(vr.value.encode("latin-1") for vr in VR if len(vr.value) == 2)
_LONG_VRS = frozenset(vr.encode("ascii") for vr in EXPLICIT_VR_LENGTH_32)

_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")

# Tags captured by the walker from the top level (short values only) so that a rejection can
# name the instance even when the full parse failed.
_CAPTURE_META = (0x00020002, 0x00020003, 0x00020010)
_CAPTURE_DATASET = (0x00080016, 0x00080018, 0x0020000D)

# --------------------------------------------------------------------------- study / series attributes

_STUDY_TAGS = frozenset(
    {
        0x00080020,  # StudyDate
        0x00080030,  # StudyTime
        0x00080050,  # AccessionNumber
        0x00080051,  # IssuerOfAccessionNumberSequence
        0x00080090,  # ReferringPhysicianName
        0x00080096,  # ReferringPhysicianIdentificationSequence
        0x00080201,  # TimezoneOffsetFromUTC
        0x00081030,  # StudyDescription
        0x00081032,  # ProcedureCodeSequence
        0x00081048,  # PhysiciansOfRecord
        0x00081049,  # PhysiciansOfRecordIdentificationSequence
        0x00081060,  # NameOfPhysiciansReadingStudy
        0x00081062,  # PhysiciansReadingStudyIdentificationSequence
        0x00081080,  # AdmittingDiagnosesDescription
        0x00081084,  # AdmittingDiagnosesCodeSequence
        0x00081110,  # ReferencedStudySequence
        0x00081120,  # ReferencedPatientSequence
        0x0020000D,  # StudyInstanceUID
        0x00200010,  # StudyID
        0x00321033,  # RequestingService
        0x00321060,  # RequestedProcedureDescription
        0x00380010,  # AdmissionID
        0x00380014,  # IssuerOfAdmissionIDSequence
    }
)
_SERIES_TAGS = frozenset(
    {
        0x00080021,  # SeriesDate
        0x00080031,  # SeriesTime
        0x00080060,  # Modality
        0x00080070,  # Manufacturer
        0x00080080,  # InstitutionName
        0x00080081,  # InstitutionAddress
        0x00081010,  # StationName
        0x0008103E,  # SeriesDescription
        0x0008103F,  # SeriesDescriptionCodeSequence
        0x00081040,  # InstitutionalDepartmentName
        0x00081050,  # PerformingPhysicianName
        0x00081052,  # PerformingPhysicianIdentificationSequence
        0x00081070,  # OperatorsName
        0x00081072,  # OperatorIdentificationSequence
        0x00081090,  # ManufacturerModelName
        0x00081111,  # ReferencedPerformedProcedureStepSequence
        0x00081250,  # RelatedSeriesSequence
        0x00102210,  # AnatomicalOrientationType (group 0010, but General Series)
        0x00180015,  # BodyPartExamined
        0x00181000,  # DeviceSerialNumber
        0x00181020,  # SoftwareVersions
        0x00181030,  # ProtocolName
        0x00185100,  # PatientPosition
        0x0020000E,  # SeriesInstanceUID
        0x00200011,  # SeriesNumber
        0x00200052,  # FrameOfReferenceUID
        0x00200060,  # Laterality
        0x00280108,  # SmallestPixelValueInSeries
        0x00280109,  # LargestPixelValueInSeries
        0x00400244,  # PerformedProcedureStepStartDate
        0x00400245,  # PerformedProcedureStepStartTime
        0x00400250,  # PerformedProcedureStepEndDate
        0x00400251,  # PerformedProcedureStepEndTime
        0x00400253,  # PerformedProcedureStepID
        0x00400254,  # PerformedProcedureStepDescription
        0x00400260,  # PerformedProtocolCodeSequence
        0x00400275,  # RequestAttributesSequence
        0x00400280,  # CommentsOnThePerformedProcedureStep
    }
)


def _is_study_tag(tag: int) -> bool:
    return tag in _STUDY_TAGS or (tag >> 16 == 0x0010 and tag & 0xFFFF != 0 and tag not in _SERIES_TAGS)


# --------------------------------------------------------------------------- public types


class InstanceRejected(Exception):
    """The file cannot be stored. `code` is one of "not_dicom", "malformed",
    "missing_attribute", "invalid_uid"; `reason` is for humans (it names the attribute when
    relevant). The UIDs are filled in when they could be read (possibly from the File Meta
    Information), so that a STOW-RS response can reference the failed instance."""

    CODES = ("not_dicom", "malformed", "missing_attribute", "invalid_uid")

    def __init__(
        self,
        code: str,
        reason: str,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
        study_instance_uid: str | None = None,
    ) -> None:
        if code not in self.CODES:
            raise ValueError(f"unknown rejection code {code!r}")
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.study_instance_uid = study_instance_uid

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_rejection,
            (self.code, self.reason, self.sop_class_uid, self.sop_instance_uid, self.study_instance_uid),
        )


def _rebuild_rejection(
    code: str, reason: str, sop_class_uid: str | None, sop_instance_uid: str | None, study_instance_uid: str | None
) -> InstanceRejected:
    return InstanceRejected(
        code,
        reason,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=study_instance_uid,
    )


class _Malformed(Exception):
    """Internal: the structure of the file is broken (becomes `InstanceRejected("malformed")`)."""


@dataclass(slots=True)
class ParsedInstance:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    metadata: bytes
    study_attributes: dict[str, Any]
    series_attributes: dict[str, Any]
    pixel: PixelIndex | None
    specific_character_set: str | None


# --------------------------------------------------------------------------- name key

_DIACRITICS = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))


def _is_diacritic(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _DIACRITICS)


def name_key(text: str) -> str:
    """Search key of a person name: case-folded, Latin/Greek/Cyrillic diacritics removed
    (other scripts are kept as they are), compatibility forms folded (full-width letters),
    `^`, `=`, `\\` and runs of white space turned into single spaces.
    "Doe^John" -> "doe john", "Müller^Jürgen" -> "muller jurgen", "Đặng" -> "dang". Use it for queries too."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(char for char in folded if not _is_diacritic(char))
    composed = unicodedata.normalize("NFC", stripped).replace("\x00", " ").replace("đ", "d")  # Vietnamese d-bar
    for separator in "^=\\":
        composed = composed.replace(separator, " ")
    return " ".join(composed.split())


# --------------------------------------------------------------------------- bounded reader


class _BoundedReader:
    """A read/seek/tell file object that never hands out (nor makes Python allocate) more bytes
    than the file has, whatever length pydicom asks for."""

    def __init__(self, raw: BinaryIO, size: int) -> None:
        self._raw = raw
        self._size = size

    def read(self, size: int | None = -1) -> bytes:
        position = self._raw.tell()
        remaining = max(0, self._size - position)
        if size is None or size < 0 or size > remaining:
            size = remaining
        return self._raw.read(size) if size else b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:  # the caller owns the underlying file
        pass


# --------------------------------------------------------------------------- structure walker


@dataclass(slots=True)
class _PixelElement:
    tag: int
    vr: str | None
    header_offset: int
    value_offset: int
    length: int | None  # None: undefined length (encapsulated)
    end: int  # first byte after the element
    bot: tuple[int, int] | None = None  # (data offset, length) of the Basic Offset Table item
    fragments: list[tuple[int, int]] = field(default_factory=list)
    source: BinaryIO | None = None  # the file, to read the Basic Offset Table and fragment tails


@dataclass(slots=True)
class _Frame:
    sequence: bool  # True: a sequence (items expected); False: a data set (elements expected)
    end: int | None  # defined end, or None for undefined length (closed by a delimiter)
    limit: int  # nothing may extend past this
    implicit: bool
    little: bool
    depth: int


@dataclass(slots=True)
class _Walk:
    end: int  # where the walk stopped (first byte not consumed)
    implicit: bool  # encoding of the top-level data set, after pydicom's heuristics
    little: bool
    pixel: _PixelElement | None = None
    captured: dict[int, str] = field(default_factory=dict)


class _Walker:
    """Walks the element structure of `f` (size `size`) with small seek/reads only."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._size = size
        self._count = 0
        self._max_count = min(MAX_ELEMENTS, max(ELEMENTS_FREE, size // BYTES_PER_ELEMENT))

    def _read(self, position: int, length: int) -> bytes:
        self._f.seek(position)
        data = self._f.read(length)
        if len(data) != length:
            raise _Malformed(f"file ends inside a header at offset {position}")
        return data

    def _peek(self, position: int, length: int, limit: int) -> bytes:
        length = max(0, min(length, limit - position))
        if not length:
            return b""
        self._f.seek(position)
        return self._f.read(length)

    def _count_one(self) -> None:
        self._count += 1
        if self._count > self._max_count:
            raise _Malformed(f"more than {self._max_count} data elements and items in a file of {self._size} bytes")

    @staticmethod
    def _looks_implicit(vr: bytes) -> bool:
        # pydicom.filereader._is_implicit_vr
        return not (len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B)

    def _top_level_implicit(
        self, position: int, assumed: bool, little: bool, stop: Callable[[int], bool] | None
    ) -> bool:
        """pydicom decides between implicit and explicit VR from the first element's VR bytes."""
        head = self._peek(position, 6, self._size)
        if len(head) < 6:
            return assumed
        found = self._looks_implicit(head[4:6])
        if found != assumed and stop is not None:
            group, element = struct.unpack("<HH" if little else ">HH", head[:4])
            if stop(group << 16 | element):
                return found
        return found

    def walk(
        self,
        start: int,
        *,
        implicit: bool,
        little: bool,
        stop: Callable[[int], bool] | None = None,
        capture: Iterable[int] = (),
        want_pixel: bool = False,
    ) -> _Walk:
        """Walk a top-level data set from `start` until `stop(tag)` is true for a top-level tag
        (the element is not consumed) or the end of the file."""
        size = self._size
        implicit = self._top_level_implicit(start, implicit, little, stop)
        result = _Walk(end=size, implicit=implicit, little=little)
        capture_set = frozenset(capture)
        stack = [_Frame(sequence=False, end=size, limit=size, implicit=implicit, little=little, depth=0)]
        position = start
        while stack:
            frame = stack[-1]
            if frame.end is not None and position >= frame.end:
                stack.pop()
                continue
            if frame.sequence:
                position = self._sequence_step(frame, position, stack)
                continue
            top = len(stack) == 1
            if position + 8 > frame.limit:
                if top and position == size:
                    break
                raise _Malformed(f"element header at offset {position} runs past the end of its container")
            header = self._read(position, 8)
            endian = "<" if frame.little else ">"
            group, element = struct.unpack(endian + "HH", header[:4])
            tag = group << 16 | element
            if top and stop is not None and stop(tag):
                result.end = position
                return result
            if tag == _ITEM_DELIMITER:
                if frame.end is not None or top:
                    raise _Malformed(f"unexpected item delimiter at offset {position}")
                stack.pop()
                position += 8
                continue
            if group == 0xFFFE:
                raise _Malformed(f"unexpected item tag ({group:04X},{element:04X}) at offset {position}")
            self._count_one()
            vr: str | None
            if frame.implicit:
                vr = None
                (length,) = struct.unpack(endian + "L", header[4:8])
                header_length = 8
            else:
                raw_vr = header[4:6]
                if raw_vr in _KNOWN_VRS:
                    vr = raw_vr.decode("ascii")
                    if raw_vr in _LONG_VRS:
                        if position + 12 > frame.limit:
                            raise _Malformed(f"element header at offset {position} runs past the end of its container")
                        (length,) = struct.unpack(endian + "L", self._read(position + 8, 4))
                        header_length = 12
                    else:
                        (length,) = struct.unpack(endian + "H", header[6:8])
                        header_length = 8
                elif not (b"AA" <= raw_vr <= b"ZZ") and pydicom_config.assume_implicit_vr_switch:
                    vr = None  # pydicom assumes a switch to implicit VR for this element
                    (length,) = struct.unpack(endian + "L", header[4:8])
                    header_length = 8
                else:
                    vr = raw_vr.decode("latin-1")
                    (length,) = struct.unpack(endian + "H", header[6:8])
                    header_length = 8
            value_position = position + header_length
            is_pixel = top and want_pixel and tag in _PIXEL_TAGS
            if is_pixel and result.pixel is not None:
                raise _Malformed("more than one pixel data element")

            if length == _UNDEFINED:
                if self._is_sequence(tag, vr, value_position, frame, undefined=True):
                    if is_pixel:
                        raise _Malformed("pixel data encoded as a sequence")
                    self._push_sequence(stack, frame, None, position)
                    position = value_position
                    continue
                pixel = _PixelElement(tag, vr, position, value_position, None, 0, source=self._f) if is_pixel else None
                position = self._fragments(value_position, frame, pixel, tag)
                if pixel is not None:
                    pixel.end = position
                    result.pixel = pixel
                continue

            end = value_position + length
            if end > frame.limit:
                where = "the file" if frame.limit == size else "its item or sequence"
                raise _Malformed(
                    f"value of ({group:04X},{element:04X}) at offset {value_position} "
                    f"({length} bytes) runs past the end of {where}"
                )
            if top and tag in capture_set and length <= 256:
                result.captured[tag] = self._read(value_position, length).decode("latin-1").strip("\x00 ")
            if self._is_sequence(tag, vr, value_position, frame, undefined=False):
                if is_pixel:
                    raise _Malformed("pixel data encoded as a sequence")
                self._push_sequence(stack, frame, end, position)
                position = value_position
                continue
            if is_pixel:
                result.pixel = _PixelElement(tag, vr, position, value_position, length, end, source=self._f)
            position = end
        return result

    def _is_sequence(self, tag: int, vr: str | None, value_position: int, frame: _Frame, *, undefined: bool) -> bool:
        """Replicates how pydicom decides that an element holds a sequence."""
        if vr == "SQ":
            return True
        if vr == "UN":
            return undefined and pydicom_config.settings.infer_sq_for_un_vr
        if vr is not None:
            return False
        try:
            return dictionary_VR(tag) == "SQ"
        except KeyError:
            if not undefined:
                return False
            head = self._peek(value_position, 4, frame.limit)
            if len(head) < 4:
                return False
            group, element = struct.unpack("<HH" if frame.little else ">HH", head)
            return (group << 16 | element) == _ITEM

    def _push_sequence(self, stack: list[_Frame], frame: _Frame, end: int | None, position: int) -> None:
        depth = frame.depth + 1
        if depth > MAX_NESTING_DEPTH:
            raise _Malformed(f"sequences nested more than {MAX_NESTING_DEPTH} deep (offset {position})")
        stack.append(
            _Frame(
                sequence=True,
                end=end,
                limit=end if end is not None else frame.limit,
                implicit=frame.implicit,
                little=frame.little,
                depth=depth,
            )
        )

    def _sequence_step(self, frame: _Frame, position: int, stack: list[_Frame]) -> int:
        if position + 8 > frame.limit:
            raise _Malformed(f"sequence item header at offset {position} runs past the end of its container")
        header = self._read(position, 8)
        endian = "<" if frame.little else ">"
        group, element, length = struct.unpack(endian + "HHL", header)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            if frame.end is not None:
                raise _Malformed(f"sequence delimiter inside a sequence of defined length at offset {position}")
            stack.pop()
            return position + 8
        if tag != _ITEM:
            raise _Malformed(f"expected a sequence item at offset {position}, found ({group:04X},{element:04X})")
        self._count_one()
        start = position + 8
        # pydicom reads items of an explicit VR data set as implicit VR when they look implicit
        implicit = frame.implicit or self._looks_implicit(self._peek(start + 4, 2, self._size))
        if length == _UNDEFINED:
            stack.append(
                _Frame(sequence=False, end=None, limit=frame.limit, implicit=implicit, little=frame.little,
                       depth=frame.depth)
            )  # fmt: skip
        else:
            end = start + length
            if end > frame.limit:
                raise _Malformed(f"sequence item at offset {position} ({length} bytes) runs past its container")
            stack.append(
                _Frame(sequence=False, end=end, limit=end, implicit=implicit, little=frame.little, depth=frame.depth)
            )
        return start

    def _fragments(self, position: int, frame: _Frame, pixel: _PixelElement | None, tag: int) -> int:
        """An undefined-length value that is not a sequence: items of defined length (the
        first is the Basic Offset Table for pixel data) up to a sequence delimiter."""
        endian = "<" if frame.little else ">"
        count = 0
        while True:
            if position + 8 > frame.limit:
                raise _Malformed(
                    f"encapsulated value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not closed before the end "
                    f"of its container (offset {position})"
                )
            group, element, length = struct.unpack(endian + "HHL", self._read(position, 8))
            item_tag = group << 16 | element
            if item_tag == _SEQUENCE_DELIMITER:
                return position + 8
            if item_tag != _ITEM:
                raise _Malformed(
                    f"expected an item in the encapsulated value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) at offset "
                    f"{position}, found ({group:04X},{element:04X})"
                )
            if length == _UNDEFINED:
                raise _Malformed(f"encapsulated item of undefined length at offset {position}")
            start = position + 8
            if start + length > frame.limit:
                raise _Malformed(
                    f"encapsulated item at offset {position} ({length} bytes) runs past the end of the file"
                )
            count += 1
            if count > MAX_FRAGMENTS:
                raise _Malformed(f"more than {MAX_FRAGMENTS} fragments in an encapsulated value")
            if pixel is not None:
                if pixel.bot is None:
                    pixel.bot = (start, length)
                else:
                    pixel.fragments.append((start, length))
            position = start + length


# --------------------------------------------------------------------------- value helpers


def _clean(text: str) -> str | None:
    text = text.replace("\x00", "").strip()
    return text or None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        parts = [_text(part) or "" for part in value]
        return _clean("\\".join(parts))
    if isinstance(value, PersonName):
        text = _clean(str(value))
        return text if text and text.strip("^= ") else None  # "^^^^" is an empty name
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _clean(str(value))
    return None


def _int(value: Any) -> int | None:
    """A single integer within PostgreSQL's int4 range, else None."""
    if isinstance(value, MultiValue | list | tuple):
        if len(value) != 1:
            return None
        value = value[0]
    if isinstance(value, bool):
        return None
    result: int | None = None
    if isinstance(value, int):
        result = int(value)
    elif isinstance(value, float):
        result = int(value) if math.isfinite(value) and value == int(value) else None
    elif isinstance(value, str | bytes):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        text = text.replace("\x00", "").strip()
        if re.fullmatch(r"[+-]?[0-9]{1,12}", text):
            result = int(text)
    if result is None or not -(2**31) <= result <= _INT32_MAX:
        return None
    return result


def _date(value: Any) -> date | None:
    text = _text(value)
    if text is None:
        return None
    match = re.fullmatch(r"([0-9]{4})\.?([0-9]{2})\.?([0-9]{2})", text)
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def _element_value(ds: Dataset, tag: int) -> Any:
    if tag not in ds:
        return None
    return ds[tag].value


def _uid_text(value: Any) -> str | None:
    """A UID value as a plain string (None when absent/empty); multi-valued UIDs keep their backslash."""
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        return _clean("\\".join(str(part) for part in value))
    if isinstance(value, bytes):
        return _clean(value.decode("latin-1"))
    return _clean(str(value))


def _valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and _UID_RE.fullmatch(uid) is not None


def _report_uid(value: Any) -> str | None:
    """A UID fit to be echoed in a rejection (not necessarily valid)."""
    try:
        text = _uid_text(value)
    except Exception:
        return None
    if text is None or len(text) > 128 or not text.isprintable():
        return None
    return text


def _json_safe(value: Any) -> Any:
    """Non-finite floats have no JSON form: they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _strip_nul(value: Any) -> Any:
    """jsonb cannot hold U+0000; the attribute subsets drop it from every string."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_strip_nul(item) for item in value]
    if isinstance(value, dict):
        return {key: _strip_nul(item) for key, item in value.items()}
    return value


# --------------------------------------------------------------------------- DICOM JSON


def _pixel_vr(elem_vr: str | None, tag: int, undefined: bool, root_implicit: bool, bits_allocated: int | None) -> str:
    """The VR pydicom reports for a pixel data element (see
    pydicom.filewriter._correct_ambiguous_vr_element)."""
    vr = elem_vr
    if vr is None or (vr == "UN" and pydicom_config.replace_un_with_known_vr):
        vr = dictionary_VR(tag)
    if vr == "OB or OW":
        if undefined:
            return "OB"
        if root_implicit:
            return "OW"
        return "OW" if (bits_allocated or 0) > 8 else "OB"
    return vr


def _tag_name(tag: int) -> str:
    try:
        keyword = keyword_for_tag(tag)
    except Exception:
        keyword = ""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}".rstrip()


class _JsonBuilder:
    def __init__(self) -> None:
        self.bulk: list[dict[str, Any]] = []

    def dataset(self, ds: Dataset, prefix: str, *, top: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tag in sorted(ds.keys()):
            if top and tag >> 16 == 0x0002:
                continue
            key = f"{tag:08X}"
            try:
                elem = ds[tag]
            except (RecursionError, MemoryError):
                raise
            except Exception as exc:
                raise _Malformed(f"cannot convert the value of {_tag_name(tag)}: {type(exc).__name__}: {exc}") from None
            out[key] = self.element(elem, prefix + key)
        return out

    def element(self, elem: DataElement, path: str) -> dict[str, Any]:
        try:
            return self._element(elem, path)
        except (_Malformed, RecursionError, MemoryError):
            raise
        except Exception as exc:
            raise _Malformed(
                f"cannot convert the value of {_tag_name(elem.tag)}: {type(exc).__name__}: {exc}"
            ) from None

    def _element(self, elem: DataElement, path: str) -> dict[str, Any]:
        if elem.VR == "SQ":
            return {
                "vr": "SQ",
                "Value": [self.dataset(item, f"{path}/{index}/", top=False) for index, item in enumerate(elem.value)],
            }
        if elem.tag in _PIXEL_TAGS and not elem.is_empty:
            result: dict[str, Any] = {"vr": elem.VR, "BulkDataURI": path}
            self.bulk.append(result)
            return result
        result = elem.to_json_dict(lambda _elem: path, BULK_DATA_THRESHOLD)
        if "BulkDataURI" in result:
            self.bulk.append(result)
        if "Value" in result:
            result["Value"] = _json_safe(result["Value"])
        return result


# --------------------------------------------------------------------------- the parse


@dataclass(slots=True)
class _Known:
    """UIDs known so far, echoed in rejections."""

    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None

    def reject(self, code: str, reason: str) -> InstanceRejected:
        return InstanceRejected(
            code,
            reason,
            sop_class_uid=self.sop_class_uid,
            sop_instance_uid=self.sop_instance_uid,
            study_instance_uid=self.study_instance_uid,
        )


def parse_instance(path: str | os.PathLike[str]) -> ParsedInstance:
    """Parse, validate and index one DICOM PS3.10 file.

    Raise InstanceRejected for anything wrong; never any other exception (only
    KeyboardInterrupt/SystemExit escape)."""
    known = _Known()
    try:
        return _parse(path, known)
    except InstanceRejected:
        raise
    except _Malformed as exc:
        raise known.reject("malformed", str(exc)) from None
    except RecursionError:
        raise known.reject("malformed", "data set nested too deeply to parse") from None
    except MemoryError:
        raise known.reject("malformed", "out of memory while parsing the data set") from None
    except Exception as exc:
        reason = f"cannot parse the data set: {type(exc).__name__}: {exc}"
        raise known.reject("malformed", reason[:500]) from None


def _parse(path: str | os.PathLike[str], known: _Known) -> ParsedInstance:
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except (OSError, ValueError, TypeError) as exc:
        raise known.reject("not_dicom", f"cannot open the file: {type(exc).__name__}: {exc}"[:500]) from None
    with raw:
        try:
            size = os.fstat(raw.fileno()).st_size
            head = raw.read(132)
        except OSError as exc:
            raise known.reject("not_dicom", f"cannot read the file: {exc}"[:500]) from None
        if len(head) < 132 or head[128:132] != b"DICM":
            raise known.reject("not_dicom", "no 128-byte preamble followed by 'DICM' (not a DICOM PS3.10 file)")
        return _parse_open(raw, size, known)


def _parse_open(raw: BinaryIO, size: int, known: _Known) -> ParsedInstance:
    walker = _Walker(raw, size)
    # File Meta Information (group 0002), then any Command Set (group 0000), as pydicom reads them
    meta = walker.walk(132, implicit=False, little=True, stop=lambda tag: tag >> 16 != 0x0002, capture=_CAPTURE_META)
    known.sop_class_uid = _report_uid(meta.captured.get(0x00020002))
    known.sop_instance_uid = _report_uid(meta.captured.get(0x00020003))
    transfer_syntax = meta.captured.get(0x00020010)
    if not transfer_syntax:
        raise known.reject("not_dicom", "the File Meta Information has no TransferSyntaxUID")
    command = walker.walk(meta.end, implicit=True, little=True, stop=lambda tag: tag >> 16 != 0x0000)
    dataset_start = command.end

    deflated = transfer_syntax == _DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    implicit = transfer_syntax == _IMPLICIT_VR_LITTLE_ENDIAN
    little = transfer_syntax != _EXPLICIT_VR_BIG_ENDIAN

    stream: BinaryIO
    if deflated:
        raw.seek(dataset_start)
        compressed = raw.read()
        cap = max(DEFLATE_MIN_CAP, DEFLATE_MAX_RATIO * len(compressed))
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflated = inflater.decompress(compressed, cap + 1)
        except zlib.error as exc:
            raise _Malformed(f"the deflated data set cannot be inflated: {exc}") from None
        del compressed
        if len(inflated) > cap or inflater.unconsumed_tail:
            raise _Malformed(f"the deflated data set inflates to more than {cap} bytes")
        if not inflater.eof:
            raise _Malformed("the deflated data set is truncated")
        stream = DicomBytesIO(inflated)
        stream_size = len(inflated)
        body_start = 0
        walker = _Walker(stream, stream_size)
        implicit = False
    else:
        stream = raw
        stream_size = size
        body_start = dataset_start

    layout = _Walk(end=body_start, implicit=implicit, little=little)
    if body_start < stream_size:
        layout = walker.walk(body_start, implicit=implicit, little=little, capture=_CAPTURE_DATASET, want_pixel=True)
    known.sop_class_uid = _report_uid(layout.captured.get(0x00080016)) or known.sop_class_uid
    known.sop_instance_uid = _report_uid(layout.captured.get(0x00080018)) or known.sop_instance_uid
    known.study_instance_uid = _report_uid(layout.captured.get(0x0020000D))

    # ---- pydicom parse (rule 1): structure already validated, reads bounded by the file size
    if deflated:
        raw.seek(132)
        file_meta = FileMetaDataset(
            read_dataset(cast(BinaryIO, _BoundedReader(raw, size)), False, True, stop_when=_outside_file_meta)
        )
        stream.seek(0)
        ds = read_dataset(stream, False, True, stop_when=_at_pixel_tag)
        stop_position = stream.tell()
        ds.file_meta = file_meta
    else:
        raw.seek(0)
        reader = _BoundedReader(raw, size)
        ds = dcmread(cast(BinaryIO, reader), stop_before_pixels=True)
        stop_position = reader.tell()
        file_meta = ds.file_meta
    pixel_element = layout.pixel
    expected_stop = pixel_element.header_offset if pixel_element is not None else stream_size
    if stop_position != expected_stop:
        raise _Malformed(
            f"inconsistent structure: the parser stopped at offset {stop_position}, expected {expected_stop}"
        )
    if pixel_element is not None and pixel_element.end < stream_size:
        _read_trailing(ds, stream if deflated else cast(BinaryIO, _BoundedReader(raw, size)), pixel_element.end, layout)

    parsed_ts = _uid_text(file_meta.get("TransferSyntaxUID"))
    if parsed_ts != transfer_syntax:
        raise _Malformed(f"inconsistent TransferSyntaxUID ({parsed_ts!r} vs {transfer_syntax!r})")

    builder = _JsonBuilder()
    document = builder.dataset(ds, "", top=True)
    root_implicit = bool(ds.original_encoding[0]) if ds.original_encoding[0] is not None else layout.implicit
    bits_allocated = _int(_element_value(ds, 0x00280100))
    if pixel_element is not None:
        pixel_vr = _pixel_vr(
            pixel_element.vr, pixel_element.tag, pixel_element.length is None, root_implicit, bits_allocated
        )
        if pixel_vr not in _PIXEL_VRS:
            raise _Malformed(f"pixel data {_tag_name(pixel_element.tag)} has VR {pixel_vr!r}")
        entry: dict[str, Any] = {"vr": pixel_vr}
        if pixel_element.length is None or pixel_element.length > 0:
            entry["BulkDataURI"] = f"{pixel_element.tag:08X}"
            builder.bulk.append(entry)
        document[f"{pixel_element.tag:08X}"] = entry
        document = dict(sorted(document.items()))

    # ---- identifying attributes (rule 2)
    uids: dict[str, str] = {}
    for keyword, tag in (
        ("SOPClassUID", 0x00080016),
        ("SOPInstanceUID", 0x00080018),
        ("StudyInstanceUID", 0x0020000D),
        ("SeriesInstanceUID", 0x0020000E),
    ):
        value = _uid_text(_element_value(ds, tag))
        reported = _report_uid(value)
        if keyword == "SOPClassUID":
            known.sop_class_uid = reported or known.sop_class_uid
        elif keyword == "SOPInstanceUID":
            known.sop_instance_uid = reported or known.sop_instance_uid
        elif keyword == "StudyInstanceUID":
            known.study_instance_uid = reported
        if value is None:
            raise known.reject(
                "missing_attribute", f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X}) is missing or empty"
            )
        uids[keyword] = value
    modality = _text(_element_value(ds, 0x00080060))
    if modality is None:
        raise known.reject("missing_attribute", "Modality (0008,0060) is missing or empty")
    for keyword, value in [*uids.items(), ("TransferSyntaxUID", transfer_syntax)]:
        if not _valid_uid(value):
            shown = value if len(value) <= 80 else value[:77] + "..."
            raise known.reject(
                "invalid_uid", f"{keyword} {shown!r} is not a UID (at most 64 digits and dots, no empty component)"
            )
    media_uid = _uid_text(file_meta.get("MediaStorageSOPInstanceUID"))
    if media_uid is not None and media_uid != uids["SOPInstanceUID"]:
        raise known.reject(
            "malformed",
            f"MediaStorageSOPInstanceUID {media_uid[:80]!r} differs from SOPInstanceUID {uids['SOPInstanceUID']!r}",
        )

    prefix = (
        f"/dicom-web/studies/{uids['StudyInstanceUID']}/series/{uids['SeriesInstanceUID']}"
        f"/instances/{uids['SOPInstanceUID']}/bulkdata/"
    )
    for entry in builder.bulk:
        entry["BulkDataURI"] = prefix + entry["BulkDataURI"]
    metadata = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")

    study_attributes: dict[str, Any] = {}
    series_attributes: dict[str, Any] = {}
    for key, value in document.items():
        tag = int(key, 16)
        if _is_study_tag(tag):
            if "BulkDataURI" not in value:
                study_attributes[key] = value
        elif tag in _SERIES_TAGS:
            series_attributes[key] = value
    study_attributes = _strip_nul(copy.deepcopy(study_attributes))
    series_attributes = _strip_nul(copy.deepcopy(series_attributes))

    # ---- columns
    number_of_frames = 1
    nof_present = 0x00280008 in ds and not ds[0x00280008].is_empty
    if nof_present:
        parsed_frames = _int(ds[0x00280008].value)
        if parsed_frames is None or parsed_frames < 1:
            if pixel_element is not None:
                raise known.reject(
                    "malformed", f"NumberOfFrames {_text(ds[0x00280008].value)!r} is not a positive integer"
                )
        else:
            number_of_frames = parsed_frames
    patient_name = _text(_element_value(ds, 0x00100010))
    study = {
        "patient_id_in_file": _text(_element_value(ds, 0x00100020)),
        "patient_name_in_file": patient_name,
        "patient_name_key": name_key(patient_name) if patient_name else None,
        "patient_birth_date": _text(_element_value(ds, 0x00100030)),
        "patient_sex": _text(_element_value(ds, 0x00100040)),
        "accession_number": _text(_element_value(ds, 0x00080050)),
        "study_id_tag": _text(_element_value(ds, 0x00200010)),
        "study_date": _date(_element_value(ds, 0x00080020)),
        "study_time": _text(_element_value(ds, 0x00080030)),
        "study_description": _text(_element_value(ds, 0x00081030)),
        "referring_physician_name": _text(_element_value(ds, 0x00080090)),
    }
    series = {
        "modality": modality,
        "series_number": _int(_element_value(ds, 0x00200011)),
        "series_description": _text(_element_value(ds, 0x0008103E)),
        "body_part_examined": _text(_element_value(ds, 0x00180015)),
        "series_date": _date(_element_value(ds, 0x00080021)),
        "series_time": _text(_element_value(ds, 0x00080031)),
        "protocol_name": _text(_element_value(ds, 0x00181030)),
    }
    rows = _int(_element_value(ds, 0x00280010))
    columns = _int(_element_value(ds, 0x00280011))
    instance = {
        "instance_number": _int(_element_value(ds, 0x00200013)),
        "number_of_frames": number_of_frames,
        "rows": rows,
        "columns": columns,
        "bits_allocated": bits_allocated,
        "photometric_interpretation": _text(_element_value(ds, 0x00280004)),
    }
    charset = _element_value(ds, 0x00080005)
    specific_character_set = _text(charset)

    # ---- pixel index (rule 3)
    pixel: PixelIndex | None = None
    if pixel_element is not None and not deflated:
        pixel = _pixel_index(ds, pixel_element, transfer_syntax, number_of_frames, rows, columns, bits_allocated,
                             big_endian=not layout.little, size=size)  # fmt: skip

    return ParsedInstance(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax,
        study=study,
        series=series,
        instance=instance,
        metadata=metadata,
        study_attributes=study_attributes,
        series_attributes=series_attributes,
        pixel=pixel,
        specific_character_set=specific_character_set,
    )


def _outside_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >> 16 != 0x0002


def _at_pixel_tag(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag in _PIXEL_TAGS


def _read_trailing(ds: Dataset, stream: BinaryIO, start: int, layout: _Walk) -> None:
    """Elements after the pixel data (e.g. Data Set Trailing Padding) that pydicom skipped."""
    stream.seek(start)
    encoding = convert_encodings(ds.get("SpecificCharacterSet")) if "SpecificCharacterSet" in ds else "iso8859"
    for elem in data_element_generator(stream, layout.implicit, layout.little, stop_when=_at_pixel_tag,
                                       encoding=encoding):  # fmt: skip
        if isinstance(elem, RawDataElement | DataElement):
            ds[elem.tag] = elem


# --------------------------------------------------------------------------- pixel index


def _pixel_index(
    ds: Dataset,
    element: _PixelElement,
    transfer_syntax: str,
    number_of_frames: int,
    rows: int | None,
    columns: int | None,
    bits_allocated: int | None,
    *,
    big_endian: bool,
    size: int,
) -> PixelIndex | None:
    encapsulated = element.length is None
    try:
        uid = UID(transfer_syntax)
        known_encapsulated: bool | None = uid.is_encapsulated if uid.is_transfer_syntax else None
    except Exception:
        known_encapsulated = None
    if known_encapsulated is True and not encapsulated:
        raise _Malformed(f"transfer syntax {transfer_syntax} needs encapsulated pixel data, found a defined length")
    if transfer_syntax in _NATIVE_TRANSFER_SYNTAXES and encapsulated:
        raise _Malformed(f"transfer syntax {transfer_syntax} needs native pixel data, found encapsulated data")

    if not encapsulated:
        length = element.length
        assert length is not None
        if length == 0:
            return None
        if element.value_offset + length > size:
            raise _Malformed("pixel data runs past the end of the file")
        if bits_allocated is None and element.tag == _FLOAT_PIXEL_DATA:
            bits_allocated = 32
        elif bits_allocated is None and element.tag == _DOUBLE_PIXEL_DATA:
            bits_allocated = 64
        samples = _int(_element_value(ds, 0x00280002)) or 1
        photometric = _text(_element_value(ds, 0x00280004))
        if samples == 3 and photometric in ("YBR_FULL_422", "YBR_PARTIAL_422"):
            samples = 2  # native 4:2:2 stores two Y per CB CR pair: 2 samples per pixel on average
        frame_length = 0
        if rows and columns and bits_allocated and rows > 0 and columns > 0 and bits_allocated > 0 and samples > 0:
            frame_bits = rows * columns * samples * bits_allocated
            if frame_bits % 8 == 0:
                frame_length = frame_bits // 8
            needed = (frame_bits * number_of_frames + 7) // 8
            if needed > length:
                raise _Malformed(
                    f"pixel data holds {length} bytes, {number_of_frames} frame(s) of {rows}x{columns}x{samples} "
                    f"at {bits_allocated} bits need {needed}"
                )
        return PixelIndex(
            offset=element.value_offset,
            length=length,
            encapsulated=False,
            number_of_frames=number_of_frames,
            frame_length=frame_length,
            frames=(),
            big_endian=big_endian,
        )

    fragments = element.fragments
    if element.bot is None:
        raise _Malformed("encapsulated pixel data has no Basic Offset Table item")
    if not fragments:
        raise _Malformed("encapsulated pixel data has no fragments")
    if transfer_syntax in MPEGTransferSyntaxes:
        # MPEG-2 / MPEG-4 / HEVC: one video stream for all frames, not cut into frames
        return PixelIndex(
            offset=element.value_offset,
            length=None,
            encapsulated=True,
            number_of_frames=number_of_frames,
            frame_length=0,
            frames=(tuple(fragments),),
            big_endian=big_endian,
        )
    frames = _assign_fragments(ds, element, number_of_frames, big_endian)
    if len(frames) != number_of_frames:
        raise _Malformed(f"encapsulated pixel data holds {len(frames)} frame(s), NumberOfFrames is {number_of_frames}")
    for frame in frames:
        for offset, length in frame:
            if offset < 0 or offset + length > size:
                raise _Malformed("a pixel data fragment lies outside the file")
    return PixelIndex(
        offset=element.value_offset,
        length=None,
        encapsulated=True,
        number_of_frames=len(frames),
        frame_length=0,
        frames=tuple(tuple(frame) for frame in frames),
        big_endian=big_endian,
    )


def _assign_fragments(
    ds: Dataset, element: _PixelElement, number_of_frames: int, big_endian: bool
) -> list[list[tuple[int, int]]]:
    fragments = element.fragments
    assert element.bot is not None
    first_item = fragments[0][0] - 8  # offsets of both tables count from the first fragment's item tag
    item_offsets = {offset - 8 - first_item: index for index, (offset, _length) in enumerate(fragments)}
    endian = ">" if big_endian else "<"

    # 1. Basic Offset Table
    bot_offset, bot_length = element.bot
    if bot_length and bot_length // 4 <= len(fragments):  # a longer table cannot fit the fragments
        if bot_length % 4:
            raise _Malformed(f"Basic Offset Table length {bot_length} is not a multiple of 4")
        element_raw = _read_range(element, bot_offset, bot_length)
        offsets = list(struct.unpack(f"{endian}{bot_length // 4}L", element_raw))
        frames = _frames_from_offsets(offsets, item_offsets, fragments)
        if frames is not None and len(frames) == number_of_frames:
            return frames

    # 2. Extended Offset Table
    if _EXTENDED_OFFSET_TABLE in ds and _EXTENDED_OFFSET_TABLE_LENGTHS in ds and number_of_frames <= len(fragments):
        eot = ds[_EXTENDED_OFFSET_TABLE].value
        eot_lengths = ds[_EXTENDED_OFFSET_TABLE_LENGTHS].value
        if (
            isinstance(eot, bytes)
            and isinstance(eot_lengths, bytes)
            and len(eot) == len(eot_lengths) == 8 * number_of_frames
        ):
            offsets = list(struct.unpack(f"{endian}{number_of_frames}Q", eot))
            lengths = list(struct.unpack(f"{endian}{number_of_frames}Q", eot_lengths))
            extended: list[list[tuple[int, int]]] = []
            for offset, length in zip(offsets, lengths, strict=True):
                index = item_offsets.get(offset)
                if index is None or length > fragments[index][1]:
                    break
                extended.append([(fragments[index][0], length)])
            else:
                return extended

    # 3. a single frame
    if number_of_frames == 1:
        return [list(fragments)]
    # 4. one fragment per frame
    if len(fragments) == number_of_frames:
        return [[fragment] for fragment in fragments]
    if len(fragments) < number_of_frames:
        raise _Malformed(f"{len(fragments)} fragment(s) cannot hold {number_of_frames} frames")
    # 5. split on JPEG / JPEG-LS / JPEG 2000 end-of-image markers
    frames = []
    current: list[tuple[int, int]] = []
    for offset, length in fragments:
        current.append((offset, length))
        tail = _read_range(element, offset + max(0, length - 3), min(3, length))
        if tail.endswith(b"\xff\xd9") or tail.endswith(b"\xff\xd9\x00"):
            frames.append(current)
            current = []
    if current:
        raise _Malformed("the last pixel data fragments do not end with an end-of-image marker")
    return frames


def _frames_from_offsets(
    offsets: list[int], item_offsets: dict[int, int], fragments: list[tuple[int, int]]
) -> list[list[tuple[int, int]]] | None:
    """Frames per the Basic Offset Table, or None when the table does not fit the fragments."""
    if not offsets or offsets[0] != 0:
        return None
    starts: list[int] = []
    for offset in offsets:
        index = item_offsets.get(offset)
        if index is None or (starts and index <= starts[-1]):
            return None
        starts.append(index)
    bounds = [*starts, len(fragments)]
    return [list(fragments[bounds[i] : bounds[i + 1]]) for i in range(len(starts))]


def _read_range(element: _PixelElement, offset: int, length: int) -> bytes:
    if element.source is None:
        raise _Malformed("pixel data file unavailable")
    element.source.seek(offset)
    data = element.source.read(length)
    if len(data) != length:
        raise _Malformed("file ends inside the pixel data")
    return data
