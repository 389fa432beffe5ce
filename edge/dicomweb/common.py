"""What every DICOMweb route of the edge shares: Accept negotiation (media type, `type` and
`transfer-syntax` parameters, q-values), DICOM JSON responses (gzip when accepted), the blob store."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, Response

from contracts.blobstore import BlobStore
from contracts.errors import NotAcceptable
from edge.dicomweb.multipart import parse_content_type

DICOM_JSON = "application/dicom+json"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = frozenset({EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED_LE})
# Lossy (or possibly lossy) compressed syntaxes stay as stored when the client names none (PS3.18 8.7.3.5.2).
LOSSY_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101",
    "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
    "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",
})
# The image media type of a compressed frame (PS3.18 Table 8.7.3-2/-4).
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


@dataclass(frozen=True, slots=True)
class Acceptable:
    media_type: str  # lower case, e.g. multipart/related, application/dicom, */*
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def part_type(self) -> str | None:
        """For multipart/related: the `type` parameter (the media type of each part)."""
        value = self.params.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def parse_accept(header: str | None) -> list[Acceptable]:
    """Accept → its media ranges, best first; none means anything (`*/*`). Commas inside quoted
    parameters (`type="application/dicom"`) are not separators."""
    if not header or not header.strip():
        return [Acceptable("*/*")]
    items: list[Acceptable] = []
    for raw in _split_outside_quotes(header, ","):
        if not raw.strip():
            continue
        media, params = parse_content_type(raw)
        q = 1.0
        if "q" in params:
            try:
                q = max(0.0, min(1.0, float(params.pop("q"))))
            except ValueError:
                q = 0.0
        if q > 0:
            items.append(Acceptable(media, params, q))
    items.sort(key=lambda a: -a.q)
    return items


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    out, buf, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return out


def accepts_gzip(request: Request) -> bool:
    value = request.headers.get("accept-encoding", "")
    return any(token.split(";")[0].strip().lower() in ("gzip", "*") for token in value.split(","))


def gzip(body: bytes) -> bytes:
    compressor = zlib.compressobj(5, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()


def require_json(request: Request) -> None:
    """QIDO and metadata answer application/dicom+json (or plain JSON); anything else is 406."""
    for item in parse_accept(request.headers.get("accept")):
        if item.media_type in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return
    raise NotAcceptable("this resource is application/dicom+json", code="not_acceptable", field="Accept")


def dicom_json(request: Request, body: bytes, *, status: int = 200, headers: dict[str, str] | None = None,
               gzipped: bytes | None = None) -> Response[bytes]:
    """A DICOM JSON answer; gzip'd when the client accepts it and it is worth it."""
    out = dict(headers or {})
    out["Vary"] = "Accept-Encoding"
    if accepts_gzip(request) and (gzipped is not None or len(body) > 1024):
        out["Content-Encoding"] = "gzip"
        return Response(gzipped if gzipped is not None else gzip(body), status_code=status, media_type=DICOM_JSON,
                        headers=out)
    return Response(body, status_code=status, media_type=DICOM_JSON, headers=out)


def blob_store(request: Request) -> BlobStore:
    return request.app.state.blobs  # type: ignore[no-any-return]


def warning_header(request: Request, warnings: list[str]) -> dict[str, str]:
    """PS3.18 8.3.3: `Warning: 299 <service>: "<text>"`, several joined by commas."""
    if not warnings:
        return {}
    host = request.headers.get("host", "imaging")
    return {"Warning": ", ".join(f'299 {host} "{w.replace(chr(34), chr(39))}"' for w in warnings)}


def query_pairs(request: Request) -> list[tuple[str, str]]:
    """The query string as (name, value) pairs, in order, repeats kept."""
    from urllib.parse import parse_qsl

    raw = request.scope.get("query_string", b"").decode("latin-1")
    return parse_qsl(raw, keep_blank_values=True)


def first(values: dict[str, Any], name: str) -> Any:
    value = values.get(name)
    return value[0] if isinstance(value, list) and value else value
