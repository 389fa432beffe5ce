"""Where the pixel data of a stored instance lies in its file: written by the imaging worker at
ingest (workers.imaging.dicom_file), read by the edge to cut frames with ranged reads (WADO-RS
frames and bulk data). Shared by both, so it lives with the contracts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PixelIndex:
    """Where the pixel data of an instance lies in its file.

    `offset` is the absolute file offset of the first byte of the Pixel Data value (for
    encapsulated data: of the Basic Offset Table item). Native data: `length` is the value
    length and frame n is `frame_length` bytes at `offset + (n-1)*frame_length`
    (`frame_length` is 0 when frames are not byte aligned). Encapsulated data: `length` is None
    and `frames[n-1]` lists the (offset, length) of the data bytes of each fragment of frame n
    (video transfer syntaxes, MPEG-2/MPEG-4/HEVC: `frames` holds one entry, the fragments of
    the whole stream, and `frame_ranges` raises ValueError when there is more than one frame).
    `big_endian`: the file is Explicit VR Big Endian (the caller byte-swaps native data)."""

    offset: int
    length: int | None
    encapsulated: bool
    number_of_frames: int
    frame_length: int
    frames: tuple[tuple[tuple[int, int], ...], ...]
    big_endian: bool

    def frame_ranges(self, frame_number: int) -> list[tuple[int, int]]:
        """The (offset, length) byte ranges making up frame `frame_number` (1-based), in order.
        IndexError when out of range; ValueError when native frames are not byte aligned."""
        if isinstance(frame_number, bool) or not isinstance(frame_number, int):
            raise TypeError("frame_number must be an int")
        if not 1 <= frame_number <= self.number_of_frames:
            raise IndexError(f"frame {frame_number} out of range 1..{self.number_of_frames}")
        if self.encapsulated:
            if len(self.frames) != self.number_of_frames:
                raise ValueError("a video stream; its frames cannot be cut without decoding")
            return list(self.frames[frame_number - 1])
        if self.frame_length <= 0:
            raise ValueError("native frames are not byte aligned; they cannot be cut without decoding")
        return [(self.offset + (frame_number - 1) * self.frame_length, self.frame_length)]

    def to_json(self) -> dict[str, Any]:
        """Compact JSON-able form; fragments of a frame are flattened to [offset, length, offset, length, ...]."""
        return {
            "offset": self.offset,
            "length": self.length,
            "encapsulated": self.encapsulated,
            "number_of_frames": self.number_of_frames,
            "frame_length": self.frame_length,
            "big_endian": self.big_endian,
            "frames": [[n for fragment in frame for n in fragment] for frame in self.frames],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PixelIndex:
        """Inverse of `to_json`; raises ValueError on anything that does not fit."""
        if not isinstance(data, dict):
            raise ValueError("pixel index must be an object")

        def integer(name: str, *, optional: bool = False) -> int | None:
            value = data.get(name)
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"pixel index: {name} must be a non-negative integer")
            return value

        def flag(name: str) -> bool:
            value = data.get(name)
            if not isinstance(value, bool):
                raise ValueError(f"pixel index: {name} must be a boolean")
            return value

        offset = integer("offset")
        length = integer("length", optional=True)
        number_of_frames = integer("number_of_frames")
        frame_length = integer("frame_length")
        encapsulated = flag("encapsulated")
        big_endian = flag("big_endian")
        raw_frames = data.get("frames")
        if not isinstance(raw_frames, list):
            raise ValueError("pixel index: frames must be a list")
        frames: list[tuple[tuple[int, int], ...]] = []
        for raw in raw_frames:
            if (
                not isinstance(raw, list)
                or len(raw) % 2
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in raw)
            ):
                raise ValueError("pixel index: each frame must be a flat list of offset, length pairs")
            frames.append(tuple((raw[i], raw[i + 1]) for i in range(0, len(raw), 2)))
        assert offset is not None and number_of_frames is not None and frame_length is not None
        if encapsulated and (length is not None or len(frames) not in (number_of_frames, 1)):
            raise ValueError("pixel index: encapsulated data needs one fragment list per frame (or one stream)")
        if not encapsulated and (length is None or frames):
            raise ValueError("pixel index: native data needs a length and no fragment lists")
        return cls(
            offset=offset,
            length=length,
            encapsulated=encapsulated,
            number_of_frames=number_of_frames,
            frame_length=frame_length,
            frames=tuple(frames),
            big_endian=big_endian,
        )
