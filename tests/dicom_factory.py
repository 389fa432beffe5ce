"""Synthetic DICOM files for the tests and benchmarks, made with pydicom: real PS3.10 files
(preamble, file meta, the attributes a modality writes), with the UIDs, patient and pixel layout
a test asks for."""

from __future__ import annotations

import io
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)


def new_uid() -> str:
    """A UID under 2.25 (a UUID as an integer), unique without a registered root."""
    return f"2.25.{uuid.uuid4().int}"


@dataclass
class StudySpec:
    patient_id: str = field(default_factory=lambda: "P" + secrets.token_hex(4).upper())
    patient_name: str = "Test^Patient"
    study_uid: str = field(default_factory=new_uid)
    accession: str = field(default_factory=lambda: secrets.token_hex(4).upper())
    study_date: str = "20261201"
    study_time: str = "101500"
    description: str = "CT CHEST"
    modality: str = "CT"


def ct_instance(study: StudySpec, *, series_uid: str | None = None, sop_uid: str | None = None,
                series_number: int = 1, instance_number: int = 1, rows: int = 64, columns: int = 64,
                frames: int = 1, implicit: bool = False, modality: str | None = None,
                seed: int | None = None) -> bytes:
    """One CT image (16-bit signed, rescaled) as PS3.10 bytes."""
    rng = np.random.default_rng(seed if seed is not None else instance_number)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or new_uid()
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid or new_uid()
    ds.PatientID = study.patient_id
    ds.PatientName = study.patient_name
    ds.PatientBirthDate = "19800517"
    ds.PatientSex = "F"
    ds.AccessionNumber = study.accession
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.StudyDescription = study.description
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "Referrer^Ann"
    ds.Modality = modality or study.modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"Series {series_number}"
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    if frames > 1:
        ds.NumberOfFrames = frames
    pixels = rng.integers(-1000, 2000, size=(frames, rows, columns), dtype=np.int16)
    ds.PixelData = pixels.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return out.getvalue()


def series_files(study: StudySpec, count: int, **kwargs: object) -> Iterator[bytes]:
    series_uid = new_uid()
    for n in range(1, count + 1):
        yield ct_instance(study, series_uid=series_uid, instance_number=n, **kwargs)  # type: ignore[arg-type]


def multipart_related(files: list[bytes], boundary: str = "DICOMwebBoundary7f3a",
                      part_type: str = "application/dicom") -> tuple[bytes, str]:
    """A STOW-RS body and its Content-Type."""
    out = io.BytesIO()
    for data in files:
        out.write(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """A multipart/related answer → [(headers, body)] (a plain split on the delimiter, independent of
    the edge's own parser)."""
    boundary = next(p.split("=", 1)[1].strip().strip('"') for p in content_type.split(";")
                    if p.strip().lower().startswith("boundary="))
    delimiter = b"--" + boundary.encode()
    assert body.startswith(delimiter), body[:80]
    chunks = body.split(b"\r\n" + delimiter)
    chunks[0] = chunks[0][len(delimiter):]
    assert chunks[-1].startswith(b"--"), "no closing delimiter"
    parts = []
    for chunk in chunks[:-1]:
        assert chunk.startswith(b"\r\n"), chunk[:40]
        head, _, data = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts
