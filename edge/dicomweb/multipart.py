"""Streaming MIME multipart for DICOMweb (PS3.18 §10.5 STOW-RS, RFC 2046 §5.1, RFC 7578).

The edge receives `multipart/related; type="application/dicom"` (STOW-RS) and `multipart/form-data`
(the web UI's upload, field `files`) bodies that may be gigabytes, so no part is ever held whole:
`iter_parts` yields one `Part` at a time and the part's body streams through `Part.chunks()`, only
the last `len(delimiter)` bytes being held back (they might be the start of the next delimiter).

Framing (RFC 2046 §5.1.1): an optional preamble, then for each part a dash-boundary line
(`--boundary`, optional transport padding, CRLF), header lines, an empty line, the body; every
delimiter after the first is `CRLF--boundary` (the CRLF belongs to the delimiter, not to the body);
the body ends with the close delimiter `CRLF--boundary--` and an ignored epilogue. A body that
stops before the close delimiter is truncated and refused (`MultipartError`). Header lines may end
with a bare LF; delimiters inside bodies must be CRLF-prefixed.

`multipart_related` writes such a body from `(headers, chunks)` pairs, streaming as well.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

__all__ = ["MultipartError", "Part", "iter_parts", "multipart_related", "new_boundary", "parse_content_type"]

_CR = 0x0D
_LF = 0x0A
_SP = 0x20
_HT = 0x09
_DASH = 0x2D
_MAX_PADDING = 1024  # transport padding (LWSP) accepted after a boundary
_MAX_BOUNDARY = 200  # RFC 2046 says 70; a little leniency for odd clients
_RFC2231_SECTION = re.compile(r"^(?P<name>[^*]+)\*(?P<index>\d+)(?P<ext>\*?)$")


class MultipartError(Exception):
    """The body is not well-formed multipart (bad or missing boundary, truncated, header too
    large, malformed header line). The caller answers 400; `reason` says what was wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------- header values


def _split_outside_quotes(value: str, sep: str) -> list[str]:
    """Split on `sep` except inside double-quoted strings (backslash escapes honoured there)."""
    items: list[str] = []
    start = 0
    quoted = False
    escaped = False
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            items.append(value[start:i])
            start = i + 1
    items.append(value[start:])
    return items


def _unquote(raw: str) -> str:
    """A parameter value: a token, or a quoted-string. Inside quotes a backslash escapes only `"`
    and `\\`, so an unescaped Windows path (`C:\\dir\\a.dcm`, as old browsers send) survives."""
    raw = raw.strip()
    if not raw.startswith('"'):
        return raw
    out: list[str] = []
    i = 1
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw) and raw[i + 1] in '"\\':
            out.append(raw[i + 1])
            i += 2
            continue
        if ch == '"':
            break
        out.append(ch)
        i += 1
    return "".join(out)


def _decode_ext_value(value: str, *, with_charset: bool = True) -> str | None:
    """RFC 8187 / 5987 `charset'lang'pct-encoded` (or only the pct-encoded part for RFC 2231
    continuation sections after the first). None when it cannot be decoded."""
    charset = "utf-8"
    if with_charset:
        pieces = value.split("'", 2)
        if len(pieces) != 3:
            return None
        charset = pieces[0].strip() or "utf-8"
        value = pieces[2]
    try:
        return unquote_to_bytes(value).decode(charset)
    except (LookupError, UnicodeDecodeError):
        return None


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """`type/subtype; name=value; name="quoted value"` → (media type lower-cased, params).

    Parameter names are lower-cased; values unquoted (case kept). Also serves Content-Disposition
    (`form-data; name="files"; filename="a.dcm"`). Extended values (`filename*=UTF-8''%E2%82%AC.dcm`,
    RFC 8187) are decoded and win over the plain parameter of the same name; RFC 2231 continuations
    (`name*0`, `name*1*`) are joined. Empty or malformed parameters are skipped, never fatal; the
    first occurrence of a repeated parameter wins."""
    items = _split_outside_quotes(value or "", ";")
    media = items[0].strip().lower()
    params: dict[str, str] = {}
    extended: dict[str, str] = {}
    sections: dict[str, list[tuple[int, bool, str]]] = {}
    for item in items[1:]:
        name, sep, raw = item.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            continue
        if (m := _RFC2231_SECTION.match(name)) is not None:
            sections.setdefault(m["name"], []).append((int(m["index"]), bool(m["ext"]), _unquote(raw)))
            continue
        if name.endswith("*"):
            decoded = _decode_ext_value(_unquote(raw))
            if decoded is not None:
                extended.setdefault(name[:-1], decoded)
            continue
        params.setdefault(name, _unquote(raw))
    for name, parts in sections.items():
        parts.sort(key=lambda p: p[0])
        text: list[str] = []
        for n, (index, ext, raw) in enumerate(parts):
            if index != n:  # a gap: keep what was contiguous
                break
            piece = _decode_ext_value(raw, with_charset=index == 0) if ext else raw
            if piece is None:
                text = []
                break
            text.append(piece)
        if text:
            extended.setdefault(name, "".join(text))
    params.update(extended)
    return media, params


def _basename(filename: str) -> str:
    """Browsers may send a client path (`C:\\Users\\x\\a.dcm`); keep the last component."""
    return re.split(r"[\\/]", filename)[-1]


# ---------------------------------------------------------------- parts


@dataclass(eq=False)
class Part:
    """One body part. `headers` has lower-case names; `content_type` is the media type only
    (lower-cased, parameters stripped), None when the part has no Content-Type; `filename` and
    `field_name` come from Content-Disposition (form-data). Stream the body with `chunks()`; moving
    on to the next part skips whatever of this body was not read."""

    headers: dict[str, str]
    content_type: str | None = None
    filename: str | None = None
    field_name: str | None = None
    _reader: _Reader | None = field(default=None, repr=False)

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, in pieces as they arrive (never empty pieces). Valid until the next part."""
        return self._body()

    async def _body(self) -> AsyncIterator[bytes]:
        reader = self._reader
        if reader is None:
            return
        while reader.current is self:
            piece = await reader.body_piece()
            if piece:
                yield piece

    @classmethod
    def from_headers(cls, headers: dict[str, str], reader: _Reader | None = None) -> Part:
        content_type = None
        if (raw := headers.get("content-type")) is not None:
            content_type = parse_content_type(raw)[0] or None
        filename = field_name = None
        if (disposition := headers.get("content-disposition")) is not None:
            _, params = parse_content_type(disposition)
            field_name = params.get("name")
            if (name := params.get("filename")) is not None:
                filename = _basename(name)
        return cls(headers, content_type, filename, field_name, reader)


class _Reader:
    """The parser state shared by `iter_parts` and the current part's `chunks()`."""

    def __init__(self, source: AsyncIterable[bytes], boundary: str, max_header_bytes: int) -> None:
        _check_boundary(boundary)
        self._source = aiter(source)
        self._buf = bytearray()
        self._eof = False
        self._dash_boundary = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._dash_boundary
        self._max_header_bytes = max_header_bytes
        self._search_from = 0  # in the body: the buffer before this offset holds no delimiter
        self.current: Part | None = None  # the part whose body is being read
        self.closed = False  # the close delimiter was read

    # -- buffer

    async def _fill(self) -> bool:
        """Append the next non-empty chunk of the source; False at its end."""
        while not self._eof:
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                self._eof = True
                break
            if chunk:
                self._buf += chunk
                return True
        return False

    def _take(self, n: int) -> bytes:
        """Remove and return the first n bytes of the buffer (one copy)."""
        with memoryview(self._buf) as view, view[:n] as head:
            data = bytes(head)
        del self._buf[:n]
        return data

    def _after_boundary(self, pos: int) -> tuple[str, int]:
        """Classify what follows `--boundary` at buffer offset pos: ("close", end) for `--`,
        ("open", end) for transport padding + line break, ("not", 0) when this is not a delimiter
        after all (the boundary is a prefix of other text), ("more", 0) when more bytes are needed."""
        buf = self._buf
        size = len(buf)
        if pos >= size:
            return "more", 0
        first = buf[pos]
        if first == _DASH:
            if pos + 1 >= size:
                return "more", 0
            return ("close", pos + 2) if buf[pos + 1] == _DASH else ("not", 0)
        j = pos
        while j < size and buf[j] in (_SP, _HT):
            j += 1
            if j - pos > _MAX_PADDING:
                raise MultipartError("too much transport padding after a boundary")
        if j >= size:
            return "more", 0
        if buf[j] == _LF:
            return "open", j + 1
        if buf[j] == _CR:
            if j + 1 >= size:
                return "more", 0
            return ("open", j + 2) if buf[j + 1] == _LF else ("not", 0)
        return "not", 0

    # -- phases

    async def preamble(self) -> None:
        """Skip the preamble up to and including the first dash-boundary line."""
        dash = self._dash_boundary
        at_start = True  # the buffer still begins at the first byte of the body
        pos = 0
        while True:
            idx = self._buf.find(dash, pos)
            if idx >= 0 and ((idx == 0 and at_start) or (idx > 0 and self._buf[idx - 1] == _LF)):
                verdict, end = self._after_boundary(idx + len(dash))
                if verdict == "more":
                    if not await self._fill():
                        raise MultipartError("truncated: the body ends inside the first boundary line")
                    continue
                if verdict != "not":
                    del self._buf[:end]
                    self.closed = verdict == "close"
                    return
            if idx >= 0:
                pos = idx + 1
                continue
            # keep what might be the start of a boundary and the line break before it
            keep = len(dash) + 1
            if len(self._buf) > keep:
                drop = len(self._buf) - keep
                del self._buf[:drop]
                at_start = False
            pos = 0
            if not await self._fill():
                raise MultipartError("no boundary found: the body is not multipart with this boundary")

    async def headers(self) -> dict[str, str]:
        """Read a part's header section (lines end with CRLF or a bare LF) up to the empty line."""
        buf = self._buf
        limit = self._max_header_bytes
        lines: list[bytes] = []
        pos = 0
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if len(buf) > limit:
                    raise MultipartError(f"a part's headers exceed {limit} bytes")
                if not await self._fill():
                    raise MultipartError("truncated: the body ends inside a part's headers")
                continue
            if nl >= limit:
                raise MultipartError(f"a part's headers exceed {limit} bytes")
            end = nl - 1 if nl > pos and buf[nl - 1] == _CR else nl
            line = bytes(buf[pos:end])
            pos = nl + 1
            if not line:
                break
            lines.append(line)
        del buf[:pos]
        return _parse_header_lines(lines)

    async def body_piece(self) -> bytes:
        """The next piece of the current part's body (maybe empty). When the delimiter ending the
        body is consumed, `current` becomes None and `closed` tells whether it was the last one."""
        buf = self._buf
        delimiter = self._delimiter
        while True:
            idx = buf.find(delimiter, self._search_from)
            if idx >= 0:
                verdict, end = self._after_boundary(idx + len(delimiter))
                if verdict == "not":
                    self._search_from = idx + 1
                    continue
                if verdict == "more":
                    if idx > 0:  # what precedes the candidate is body for sure
                        self._search_from = 0
                        return self._take(idx)
                    if not await self._fill():
                        raise MultipartError("truncated: the body ends inside a boundary")
                    continue
                piece = self._take(idx)
                del buf[: end - idx]
                self._search_from = 0
                self.current = None
                self.closed = verdict == "close"
                return piece
            safe = len(buf) - (len(delimiter) - 1)
            if safe > 0:
                self._search_from = max(0, self._search_from - safe)
                return self._take(safe)
            if not await self._fill():
                raise MultipartError("truncated: the body ends before the closing boundary")

    async def skip_body(self) -> None:
        while self.current is not None:
            await self.body_piece()

    async def epilogue(self) -> None:
        """The epilogue is ignored; the source is still read to its end."""
        self._buf.clear()
        while await self._fill():
            self._buf.clear()


def _parse_header_lines(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    last: str | None = None
    for raw in lines:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("latin-1")
        if line[:1] in (" ", "\t"):  # obsolete line folding: continues the previous header
            if last is None:
                raise MultipartError("malformed part header: a continuation line comes first")
            headers[last] = f"{headers[last]} {line.strip()}".strip()
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or " " in name or "\t" in name:
            raise MultipartError(f"malformed part header line {line[:60]!r}")
        if name in headers:  # a repeated header: the first one counts
            last = None
            continue
        headers[name] = value.strip()
        last = name
    return headers


def _check_boundary(boundary: str) -> None:
    if not boundary or len(boundary) > _MAX_BOUNDARY:
        raise MultipartError("the boundary must have 1 to 200 characters")
    if any(ch in boundary for ch in "\r\n") or not boundary.isascii():
        raise MultipartError("the boundary has characters not allowed in a boundary")


async def iter_parts(
    source: AsyncIterator[bytes] | AsyncIterable[bytes], boundary: str, *, max_header_bytes: int = 16384
) -> AsyncIterator[Part]:
    """Parse a multipart body streamed as `source` chunks of any size, yielding its parts in order.

    Each part must be consumed through `part.chunks()` before asking for the next one, or whatever
    is left of it is skipped. Raises `MultipartError` for broken framing, including a body truncated
    before the close delimiter (so a part that was cut short is never taken for complete); errors
    of the source itself (a client that went away) propagate unchanged."""
    reader = _Reader(source, boundary, max_header_bytes)
    await reader.preamble()
    while not reader.closed:
        headers = await reader.headers()
        part = Part.from_headers(headers, reader)
        reader.current = part
        yield part
        await reader.skip_body()
    await reader.epilogue()


# ---------------------------------------------------------------- writer


def new_boundary() -> str:
    """A fresh random boundary (40 hex digits: valid bchars, never in need of quoting)."""
    return secrets.token_hex(20)


def _header_line(name: str, value: str) -> bytes:
    if not name or any(ch in name for ch in ":\r\n \t") or any(ch in value for ch in "\r\n"):
        raise ValueError(f"invalid part header {name!r}")
    return f"{name}: {value}\r\n".encode()


async def multipart_related(
    parts: AsyncIterable[tuple[dict[str, str], AsyncIterable[bytes]]], boundary: str
) -> AsyncIterator[bytes]:
    """Stream a multipart body (RFC 2046 §5.1.1; used for `multipart/related` responses): for each
    `(headers, body chunks)` a delimiter line, the header lines, an empty line and the body, then
    the close delimiter. Parts and bodies are pulled lazily, one at a time."""
    try:
        _check_boundary(boundary)
    except MultipartError as exc:
        raise ValueError(exc.reason) from exc
    dash = b"--" + boundary.encode("ascii")
    first = True
    async for headers, body in parts:
        head = bytearray(dash if first else b"\r\n" + dash)
        head += b"\r\n"
        for name, value in headers.items():
            head += _header_line(name, value)
        head += b"\r\n"
        yield bytes(head)
        first = False
        async for chunk in body:
            if chunk:
                yield bytes(chunk)
    yield (dash if first else b"\r\n" + dash) + b"--\r\n"
