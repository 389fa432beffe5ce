"""Streaming multipart parser and writer (edge/dicomweb/multipart.py): framing per RFC 2046 §5.1,
chunk boundaries anywhere, truncation refused, bounded buffering, interoperability with Python's
`email` package, and a throughput measurement (printed, never asserted)."""

from __future__ import annotations

import email.policy
import hashlib
import random
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from edge.dicomweb.multipart import (
    MultipartError,
    Part,
    iter_parts,
    multipart_related,
    new_boundary,
    parse_content_type,
)

BOUNDARY = "Zb7kQ2xL0boundary"


async def chunked(data: bytes, sizes: Iterable[int] | int) -> AsyncIterator[bytes]:
    """`data` in pieces: a fixed size, or successive sizes from an iterator (cycled to the end)."""
    it: Iterator[int] = iter([sizes] * (len(data) + 1)) if isinstance(sizes, int) else iter(sizes)
    pos = 0
    while pos < len(data):
        n = max(1, next(it))
        yield data[pos : pos + n]
        pos += n


def random_sizes(seed: int, low: int = 1, high: int = 97) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.randint(low, high)


def build(parts: list[tuple[list[tuple[str, str]], bytes]], boundary: str = BOUNDARY, *,
          preamble: bytes = b"", epilogue: bytes = b"", close: bool = True) -> bytes:
    out = bytearray(preamble)
    for i, (headers, body) in enumerate(parts):
        out += (b"--" if i == 0 and not preamble else b"\r\n--") + boundary.encode() + b"\r\n"
        for name, value in headers:
            out += f"{name}: {value}\r\n".encode()
        out += b"\r\n" + body
    if close:
        out += b"\r\n--" + boundary.encode() + b"--"
    out += epilogue
    return bytes(out)


async def collect(source: AsyncIterator[bytes], boundary: str = BOUNDARY,
                  **kwargs: int) -> list[tuple[Part, bytes]]:
    result: list[tuple[Part, bytes]] = []
    async for part in iter_parts(source, boundary, **kwargs):
        body = bytearray()
        async for chunk in part.chunks():
            assert chunk, "no empty chunks are yielded"
            body += chunk
        result.append((part, bytes(body)))
    return result


def tricky_bodies() -> list[bytes]:
    rng = random.Random(7)
    b = BOUNDARY.encode()
    return [
        b"",  # empty part
        b"plain text\r\nwith lines\r\n",
        b"--" + b + b" at the start of the body, without the CRLF before it",
        b"text\n--" + b + b"\nbare LF before the boundary is body, not a delimiter",
        b"text\r\n--" + b + b"X: the boundary followed by other characters is body",
        b"text\r\n--" + b + b"-x: one dash is not a close delimiter",
        b"text\r\n--" + b + b" \t\rx: padding and a CR without LF is not a boundary line",
        b"\r\n-\r\n--\r\n--" + b[:-1] + b"\r\n",  # partial delimiters
        b"ends with CR\r",
        b"ends with CRLF and dashes\r\n--",
        bytes(rng.getrandbits(8) for _ in range(5000)),
        bytes(range(256)) * 8,
    ]


def tricky_message(**kwargs: bytes) -> tuple[bytes, list[bytes]]:
    bodies = tricky_bodies()
    parts = [([("Content-Type", "application/dicom"), ("Content-ID", f"<part{i}>")], body)
             for i, body in enumerate(bodies)]
    return build(parts, **kwargs), bodies


# ---------------------------------------------------------------- parse_content_type


@pytest.mark.parametrize(("value", "media", "params"), [
    ('multipart/related; type="application/dicom"; boundary=abc', "multipart/related",
     {"type": "application/dicom", "boundary": "abc"}),
    ('Multipart/Related;TYPE=application/dicom;Boundary="a;b,c=d"', "multipart/related",
     {"type": "application/dicom", "boundary": "a;b,c=d"}),
    ("  multipart/form-data ;  boundary = ----WebKitFormBoundary7MA4YWxk ; ", "multipart/form-data",
     {"boundary": "----WebKitFormBoundary7MA4YWxk"}),
    ('text/plain; charset="utf-8"; junk; =x; q=0.5', "text/plain", {"charset": "utf-8", "q": "0.5"}),
    ('a/b; x="quoted \\"inner\\" text"', "a/b", {"x": 'quoted "inner" text'}),
    ('a/b; x="unterminated', "a/b", {"x": "unterminated"}),
    ("", "", {}),
    ("application/dicom", "application/dicom", {}),
    ('a/b; boundary=one; boundary=two', "a/b", {"boundary": "one"}),
])
def test_parse_content_type(value: str, media: str, params: dict[str, str]) -> None:
    assert parse_content_type(value) == (media, params)


def test_content_disposition_parameters() -> None:
    _, params = parse_content_type('form-data; name="files"; filename="plain.dcm"; '
                                   "filename*=UTF-8''%E2%82%AC%20rates.dcm")
    assert params == {"name": "files", "filename": "€ rates.dcm"}
    _, params = parse_content_type("attachment; filename*=iso-8859-1'en'%A3%20rates")
    assert params["filename"] == "£ rates"
    _, params = parse_content_type("attachment; filename*0=\"long \"; filename*1*=%E2%82%AC; filename*2=.dcm")
    assert params["filename"] == "long €.dcm"
    _, params = parse_content_type("attachment; filename=ok.dcm; filename*=bogus-charset''x")
    assert params["filename"] == "ok.dcm"  # an undecodable extended value does not replace the plain one


# ---------------------------------------------------------------- parsing


async def test_parts_headers_and_bodies() -> None:
    body = build([
        ([("Content-Type", 'application/dicom; transfer-syntax="1.2.840.10008.1.2.1"'), ("X-Extra", "  v  ")],
         b"DICM..."),
        ([("Content-Disposition", 'form-data; name="files"; filename="C:\\Users\\me\\scan 1.dcm"'),
          ("Content-Type", "Application/DICOM")], b"second"),
        ([("Content-Disposition", 'form-data; name="orderId"')], b"1234"),
    ])
    parts = await collect(chunked(body, 5))
    assert [b for _, b in parts] == [b"DICM...", b"second", b"1234"]
    first, second, third = (p for p, _ in parts)
    assert first.headers == {"content-type": 'application/dicom; transfer-syntax="1.2.840.10008.1.2.1"',
                             "x-extra": "v"}
    assert first.content_type == "application/dicom"
    assert first.filename is None and first.field_name is None
    assert second.content_type == "application/dicom"
    assert second.field_name == "files"
    assert second.filename == "scan 1.dcm"  # client path stripped, backslashes not taken for escapes
    assert third.field_name == "orderId" and third.filename is None and third.content_type is None


@pytest.mark.parametrize("sizes", ["one", "random1", "random2", "random3", "whole"])
async def test_any_chunking_gives_the_same_parts(sizes: str) -> None:
    body, expected = tricky_message(preamble=b"This is the preamble.\r\n--" + BOUNDARY.encode() + b"x\r\n",
                                    epilogue=b"\r\nThis is the epilogue.\r\n--" + BOUNDARY.encode() + b"\r\n")
    source = {
        "one": chunked(body, 1),
        "random1": chunked(body, random_sizes(1)),
        "random2": chunked(body, random_sizes(2, 1, 9)),
        "random3": chunked(body, random_sizes(3, 50, 5000)),
        "whole": chunked(body, len(body)),
    }[sizes]
    parts = await collect(source)
    assert [b for _, b in parts] == expected
    assert [p.headers["content-id"] for p, _ in parts] == [f"<part{i}>" for i in range(len(expected))]


async def test_every_split_point_of_a_small_body() -> None:
    body = build([([("Content-Type", "text/plain")], b"a\r\n--" + BOUNDARY.encode() + b"! b"),
                  ([], b""), ([("A", "1")], b"\r\n")])
    for cut in range(1, len(body)):
        async def two(cut: int = cut) -> AsyncIterator[bytes]:
            yield body[:cut]
            yield body[cut:]
        parts = await collect(two())
        assert [b for _, b in parts] == [b"a\r\n--" + BOUNDARY.encode() + b"! b", b"", b"\r\n"], cut


async def test_transport_padding_and_bare_lf_headers() -> None:
    b = BOUNDARY.encode()
    body = (b"--" + b + b" \t \r\n"
            b"Content-Type: text/plain\n"
            b"X-Folded: first\r\n  second\n"
            b"\n"
            b"one\r\n--" + b + b"\t\n"  # padding and a bare LF after an inner boundary
            b"\r\n"
            b"two\r\n--" + b + b"--  trailing junk\r\nepilogue")
    parts = await collect(chunked(body, 3))
    assert [b for _, b in parts] == [b"one", b"two"]
    assert parts[0][0].headers == {"content-type": "text/plain", "x-folded": "first second"}
    assert parts[1][0].headers == {}


async def test_empty_parts_and_parts_without_headers() -> None:
    body = build([([], b""), ([("Content-Type", "application/dicom")], b""), ([], b"x"), ([], b"")])
    parts = await collect(chunked(body, 2))
    assert [b for _, b in parts] == [b"", b"", b"x", b""]
    assert parts[1][0].content_type == "application/dicom"


async def test_many_parts() -> None:
    bodies = [f"part {i}".encode() * (i % 7) for i in range(2000)]
    body = build([([("Content-Type", "application/dicom")], x) for x in bodies])
    parts = await collect(chunked(body, random_sizes(11, 1, 300)))
    assert [b for _, b in parts] == bodies


async def test_zero_parts() -> None:
    assert await collect(chunked(b"preamble\r\n--" + BOUNDARY.encode() + b"--\r\n", 4)) == []


async def test_unread_and_partly_read_bodies_are_skipped() -> None:
    bodies = [b"A" * 10_000, b"B" * 30_000, b"C" * 5]
    body = build([([("N", str(i))], x) for i, x in enumerate(bodies)])
    seen: list[tuple[str, bytes]] = []
    async for part in iter_parts(chunked(body, 1000), BOUNDARY):
        if part.headers["n"] == "0":
            continue  # not read at all
        if part.headers["n"] == "1":
            it = part.chunks()
            seen.append(("1", await anext(it)))  # read one piece, then move on
            continue
        seen.append(("2", b"".join([c async for c in part.chunks()])))
    assert seen[0][0] == "1" and seen[0][1] and set(seen[0][1]) == {ord("B")}
    assert seen[1] == ("2", b"C" * 5)


async def test_chunks_of_a_past_part_are_empty() -> None:
    body = build([([], b"one"), ([], b"two")])
    parts: list[Part] = []
    async for part in iter_parts(chunked(body, 2), BOUNDARY):
        parts.append(part)
    assert [c async for c in parts[0].chunks()] == []


async def test_bodies_stream_without_buffering_the_part() -> None:
    """While a 2 MB part arrives in 4 KiB chunks, at most one chunk plus len(delimiter) bytes are
    held back: the body is delivered as it streams."""
    payload = random.Random(5).randbytes(2_000_000)
    body = build([([("Content-Type", "application/dicom")], payload)])
    pulled = 0

    async def counting() -> AsyncIterator[bytes]:
        nonlocal pulled
        async for chunk in chunked(body, 4096):
            pulled += len(chunk)
            yield chunk

    header_bytes = body.index(b"\r\n\r\n") + 4
    delivered = 0
    digest = hashlib.sha256()
    async for part in iter_parts(counting(), BOUNDARY):
        async for chunk in part.chunks():
            delivered += len(chunk)
            digest.update(chunk)
            held = pulled - header_bytes - delivered
            assert held <= 4096 + len(BOUNDARY) + 4, held
    assert delivered == len(payload)
    assert digest.digest() == hashlib.sha256(payload).digest()


# ---------------------------------------------------------------- broken framing


async def test_every_truncation_is_refused() -> None:
    bodies = [b for b in tricky_bodies() if len(b) < 200] + [bytes(range(256))]
    body = build([([("Content-Type", "application/dicom")], x) for x in bodies])
    assert [b for _, b in await collect(chunked(body, 64))] == bodies
    for cut in range(len(body)):
        with pytest.raises(MultipartError):
            await collect(chunked(body[:cut], 7))


async def test_missing_close_delimiter() -> None:
    body = build([([], b"complete-looking part")], close=False)
    with pytest.raises(MultipartError, match="truncated"):
        await collect(chunked(body, 5))
    with pytest.raises(MultipartError, match="truncated"):
        await collect(chunked(body + b"\r\n--" + BOUNDARY.encode() + b"\r\n", 5))
    with pytest.raises(MultipartError, match="truncated"):
        await collect(chunked(body + b"\r\n--" + BOUNDARY.encode() + b"-", 5))


async def test_no_boundary_at_all() -> None:
    with pytest.raises(MultipartError, match="no boundary"):
        await collect(chunked(b"just some bytes\r\n--other\r\n\r\nx\r\n--other--", 3))
    with pytest.raises(MultipartError, match="no boundary"):
        await collect(chunked(b"", 3))


async def test_header_limits_and_malformed_headers() -> None:
    big = build([([("X-Big", "v" * 20_000)], b"body")])
    with pytest.raises(MultipartError, match="exceed"):
        await collect(chunked(big, 1000))
    assert len(await collect(chunked(big, 1000), max_header_bytes=32_768)) == 1
    no_newline = b"--" + BOUNDARY.encode() + b"\r\n" + b"X" * 50_000
    with pytest.raises(MultipartError, match="exceed"):
        await collect(chunked(no_newline, 999))
    for bad in (b"no colon here", b"Bad Name: x", b": empty name", b" folded-first: x"):
        with pytest.raises(MultipartError, match="malformed"):
            await collect(chunked(b"--" + BOUNDARY.encode() + b"\r\n" + bad + b"\r\n\r\nx\r\n--"
                                  + BOUNDARY.encode() + b"--", 4))


async def test_bad_boundaries_and_source_errors() -> None:
    for boundary in ("", "x" * 201, "a\r\nb"):
        with pytest.raises(MultipartError):
            await collect(chunked(b"--x--", 1), boundary)

    async def failing() -> AsyncIterator[bytes]:
        yield b"--" + BOUNDARY.encode() + b"\r\n\r\npartial"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await collect(failing())


# ---------------------------------------------------------------- writer


async def agen(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def parts_of(spec: list[tuple[dict[str, str], list[bytes]]]
                   ) -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
    for headers, pieces in spec:
        yield headers, agen(pieces)


def test_new_boundary() -> None:
    a, b = new_boundary(), new_boundary()
    assert a != b
    assert 1 <= len(a) <= 70 and a.isascii() and a.isalnum()


async def test_writer_output_round_trips() -> None:
    bodies = tricky_bodies()
    spec = [({"Content-Type": "application/dicom", "Content-Location": f"/x/{i}"},
             [body[j : j + 333] for j in range(0, len(body), 333)]) for i, body in enumerate(bodies)]
    boundary = new_boundary()
    out = b"".join([chunk async for chunk in multipart_related(parts_of(spec), boundary)])
    assert out.startswith(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n")
    assert out.endswith(b"\r\n--" + boundary.encode() + b"--\r\n")

    parts = await collect(chunked(out, random_sizes(4)), boundary)
    assert [b for _, b in parts] == bodies
    assert [p.headers for p, _ in parts] == [{"content-type": "application/dicom", "content-location": f"/x/{i}"}
                                             for i in range(len(bodies))]

    msg = BytesParser(policy=email.policy.default).parsebytes(
        f'Content-Type: multipart/related; type="application/dicom"; boundary="{boundary}"\r\n\r\n'.encode() + out)
    assert not msg.defects
    email_parts = list(msg.iter_parts())
    assert len(email_parts) == len(bodies)
    for i, (part, body) in enumerate(zip(email_parts, bodies, strict=True)):
        assert part.get_content_type() == "application/dicom"
        assert part["Content-Location"] == f"/x/{i}"
        assert part.get_payload(decode=True) == body


async def test_writer_edge_cases() -> None:
    out = b"".join([c async for c in multipart_related(parts_of([]), "b1")])
    assert out == b"--b1--\r\n"
    out = b"".join([c async for c in multipart_related(parts_of([({}, [])]), "b1")])
    assert out == b"--b1\r\n\r\n\r\n--b1--\r\n"
    assert [b for _, b in await collect(chunked(out, 1), "b1")] == [b""]
    with pytest.raises(ValueError, match="header"):
        _ = [c async for c in multipart_related(parts_of([({"X": "a\r\nInjected: 1"}, [])]), "b1")]
    with pytest.raises(ValueError, match="boundary"):
        _ = [c async for c in multipart_related(parts_of([]), "")]


async def test_parses_what_the_email_package_writes() -> None:
    """A multipart/form-data body as Python's email generator writes it (CRLF policy). The
    generator rewrites bare CR and LF in payloads, so these have CRLF line ends only."""
    msg = EmailMessage(policy=email.policy.HTTP)
    msg["Content-Type"] = "multipart/form-data"
    noise = random.Random(9).randbytes(10_000).replace(b"\r", b"").replace(b"\n", b"")
    payloads = [noise[:5000] + b"\r\n" + noise[5000:], b"second file\r\n"]
    for i, payload in enumerate(payloads):
        sub = EmailMessage(policy=email.policy.HTTP)
        sub.set_content(payload, maintype="application", subtype="dicom", cte="binary",
                        disposition="form-data", filename=f"scan{i}.dcm")
        sub.replace_header("Content-Disposition", f'form-data; name="files"; filename="scan{i}.dcm"')
        msg.attach(sub)
    raw = msg.as_bytes(policy=email.policy.HTTP)
    _, _, body = raw.partition(b"\r\n\r\n")
    boundary = msg.get_boundary()
    assert boundary
    parts = await collect(chunked(body, random_sizes(6, 1, 4000)), boundary)
    assert [b for _, b in parts] == payloads
    assert [(p.field_name, p.filename, p.content_type) for p, _ in parts] == [
        ("files", "scan0.dcm", "application/dicom"), ("files", "scan1.dcm", "application/dicom")]


# ---------------------------------------------------------------- throughput


async def test_throughput_100mb(capsys: pytest.CaptureFixture[str]) -> None:
    part_size = 512 * 1024
    count = 200  # 100 MiB of part bodies
    payload = random.Random(3).randbytes(part_size)
    boundary = new_boundary()

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        for _ in range(count):
            yield {"Content-Type": "application/dicom"}, agen([payload])

    body = b"".join([c async for c in multipart_related(parts(), boundary)])

    async def source() -> AsyncIterator[bytes]:
        step = 64 * 1024
        for pos in range(0, len(body), step):
            yield body[pos : pos + step]

    started = time.perf_counter()
    n_parts = 0
    total = 0
    async for part in iter_parts(source(), boundary):
        n_parts += 1
        async for chunk in part.chunks():
            total += len(chunk)
    elapsed = time.perf_counter() - started
    assert n_parts == count
    assert total == part_size * count
    with capsys.disabled():
        print(f"\n[multipart] parsed {len(body) / 1e6:.1f} MB ({count} parts of 0.5 MiB, 64 KiB chunks) "
              f"in {elapsed * 1000:.0f} ms: {len(body) / elapsed / 1e6:.0f} MB/s")
