"""A local stand-in for Cloudinary that speaks its wire format for what the `cloudinary` SDK sends.

In a test (background thread):

    with CloudinaryStandIn(tmp_path) as standin:
        env = standin.settings_env()   # CLOUDINARY_URL, CLOUDINARY_UPLOAD_PREFIX, CLOUDINARY_DELIVERY_PREFIX

As a process:

    python -m tests.cloudinary_standin --port 0 --dir /tmp/cld [--cloudinary-url cloudinary://key:secret@cloud]

prints `CLOUDINARY_STANDIN_URL=http://127.0.0.1:<port>` once it listens (the port it took for --port 0).

Endpoints (everything on one port; `<rt>` is the resource type, `<type>` the delivery type):

    POST /v1_1/<cloud>/<rt>/upload     signed multipart upload; chunked with Content-Range + X-Unique-Upload-Id
    POST /v1_1/<cloud>/<rt>/explicit   an asset's details (404 if missing)
    POST /v1_1/<cloud>/<rt>/rename     from_public_id → to_public_id (overwrite, to_type)
    POST /v1_1/<cloud>/<rt>/destroy    {"result": "ok" | "not found"}
    GET  /v1_1/<cloud>/resources/<rt>/<type>   Admin API, HTTP basic auth: prefix, max_results, next_cursor
    GET|HEAD /<cloud>/<rt>/<type>/[s--<sig>--/][v<version>/]<public_id>   delivery; Range → 206 / 416

Upload API requests are checked as Cloudinary documents it: every parameter except file, cloud_name, resource_type
and api_key (and the signature itself), array values joined with commas, sorted `k=v` pairs joined with `&` (with
`&` inside a pair sent as %26, the SDK's signature version 2; version 1 is accepted too), the API secret appended,
then the SHA-1 (or the account's SHA-256) hex digest; timestamps older than an hour are stale. Refusals use
Cloudinary's JSON error body `{"error": {"message": …}}` and status (401 for credentials and signatures).
Delivery of `authenticated` assets needs the URL signature the SDK builds (`s--` + the first 8 characters of the
URL-safe base64 of SHA-1(<public_id as in the URL> + secret) + `--`); a bad or missing one is a 401 with an
`X-Cld-Error` header, as Cloudinary answers. `private` originals are never delivered.

Assets are plain files under <dir>/<rt>/<type>/<public_id>; their created_at and version come from the file's mtime
(tests may backdate a file with os.utime to age an asset).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import re
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import uvicorn
from litestar import Litestar, Request, Response, get, post, route
from litestar.datastructures import UploadFile
from litestar.enums import HttpMethod
from litestar.response import Stream

DEFAULT_CLOUD = "standin"
DEFAULT_API_KEY = "614335564976464"
DEFAULT_API_SECRET = "standin-api-secret-not-a-real-one"
STALE_AFTER = 3600.0
_NOT_SIGNED = frozenset({"file", "cloud_name", "resource_type", "api_key", "signature"})
_DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
_NAME = re.compile(r"^[a-z_]+$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def _error(status: int, message: str) -> Response[Any]:
    return Response({"error": {"message": message}}, status_code=status)


def _cld_refusal(status: int, reason: str) -> Response[Any]:
    """Delivery errors: an empty body and the reason in X-Cld-Error, as Cloudinary's CDN answers."""
    return Response(b"", status_code=status, headers={"x-cld-error": reason}, media_type="text/plain")


def _valid_public_id(public_id: str) -> bool:
    if not public_id or len(public_id) > 1024 or "\\" in public_id or any(ord(c) < 32 for c in public_id):
        return False
    return all(segment not in ("", ".", "..") for segment in public_id.split("/"))


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CloudinaryStandIn:
    def __init__(
        self,
        directory: str | Path,
        *,
        cloud: str = DEFAULT_CLOUD,
        api_key: str = DEFAULT_API_KEY,
        api_secret: str = DEFAULT_API_SECRET,
        signature_algorithm: str = "sha1",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cloud = cloud
        self.api_key = api_key
        self.api_secret = api_secret
        self.signature_algorithm = signature_algorithm
        self.host = host
        self.port = port
        self.calls: Counter[str] = Counter()  # per endpoint ("upload", "upload-chunk", "rename", …) and "stored"
        self.upload_delay = 0.0  # seconds to sit on each upload before storing it (tests of cancellation)
        self._sessions: dict[str, int] = {}  # X-Unique-Upload-Id → bytes received so far
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_cloudinary_url(cls, directory: str | Path, url: str, **kwargs: Any) -> CloudinaryStandIn:
        parts = urlsplit(url)
        credentials, _, cloud = parts.netloc.rpartition("@")
        api_key, _, api_secret = credentials.partition(":")
        return cls(directory, cloud=cloud, api_key=unquote(api_key), api_secret=unquote(api_secret), **kwargs)

    # ---- what clients need
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def cloudinary_url(self) -> str:
        return f"cloudinary://{self.api_key}:{self.api_secret}@{self.cloud}"

    def settings_env(self) -> dict[str, str]:
        return {
            "BLOB_STORE": "cloudinary",
            "CLOUDINARY_URL": self.cloudinary_url,
            "CLOUDINARY_UPLOAD_PREFIX": self.url,
            "CLOUDINARY_DELIVERY_PREFIX": self.url,
        }

    def asset_path(self, public_id: str, resource_type: str = "raw", type: str = "authenticated") -> Path:
        if not (_NAME.match(resource_type) and _NAME.match(type) and _valid_public_id(public_id)):
            raise ValueError(f"bad asset {resource_type}/{type}/{public_id}")
        return self.directory / resource_type / type / public_id

    # ---- signatures
    def api_signature(self, params: dict[str, str], version: int = 2) -> tuple[str, str]:
        """(string to sign, hex signature) of Upload API parameters."""
        pairs = [f"{key}={value}" for key, value in params.items() if value]
        if version >= 2:
            pairs = [pair.replace("&", "%26") for pair in pairs]
        to_sign = "&".join(sorted(pairs))
        return to_sign, _DIGESTS[self.signature_algorithm]((to_sign + self.api_secret).encode()).hexdigest()

    def url_signature(self, to_sign: str, length: int = 8) -> str:
        """The `s--…--` component of a signed delivery URL (8 characters; 32 = the long SHA-256 form)."""
        digest = hashlib.sha256 if length == 32 else _DIGESTS[self.signature_algorithm]
        size = 32 if length == 32 else 8
        return base64.urlsafe_b64encode(digest((to_sign + self.api_secret).encode()).digest())[:size].decode()

    def _check_signed(self, fields: list[tuple[str, str]]) -> Response[Any] | None:
        params: dict[str, list[str]] = {}
        for name, value in fields:
            params.setdefault(name.removesuffix("[]"), []).append(value)
        api_key = params.get("api_key", [""])[0]
        signature = params.get("signature", [""])[0]
        timestamp = params.get("timestamp", [""])[0]
        if not api_key:
            return _error(401, "Must supply api_key")
        if api_key != self.api_key:
            return _error(401, f"Unknown API key {api_key}")
        if not signature:
            return _error(401, "Missing required parameter - signature")
        if not timestamp.isdigit():
            return _error(400, "Missing required parameter - timestamp")
        if time.time() - int(timestamp) > STALE_AFTER:
            reported = datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%d %H:%M:%S +0000")
            return _error(400, f"Stale request - reported time is {reported} which is more than 1 hour ago")
        signed = {key: ",".join(values) for key, values in params.items() if key not in _NOT_SIGNED}
        to_sign, expected = self.api_signature(signed, version=2)
        _, expected_v1 = self.api_signature(signed, version=1)
        if not (hmac.compare_digest(signature, expected) or hmac.compare_digest(signature, expected_v1)):
            return _error(401, f"Invalid Signature {signature}. String to sign - '{to_sign}'.")
        return None

    def _check_basic_auth(self, request: Request[Any, Any, Any]) -> Response[Any] | None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return _error(401, "Must supply api_key")
        try:
            api_key, _, api_secret = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return _error(401, "Invalid credentials")
        if api_key != self.api_key:
            return _error(401, f"Unknown API key {api_key}")
        if not hmac.compare_digest(api_secret, self.api_secret):
            return _error(401, "Invalid credentials")
        return None

    # ---- responses
    def _resource(self, public_id: str, resource_type: str, type: str, **extra: Any) -> dict[str, Any]:
        path = self.asset_path(public_id, resource_type, type)
        stat = path.stat()
        version = int(stat.st_mtime)
        signature = f"s--{self.url_signature(public_id)}--/" if type == "authenticated" else ""
        url = f"{self.url}/{self.cloud}/{resource_type}/{type}/{signature}v{version}/{public_id}"
        return {
            "asset_id": hashlib.md5(f"{resource_type}/{type}/{public_id}".encode()).hexdigest(),
            "public_id": public_id,
            "version": version,
            "version_id": hashlib.md5(f"{public_id}@{stat.st_mtime_ns}".encode()).hexdigest(),
            "signature": self.api_signature({"public_id": public_id, "version": str(version)}, version=1)[1],
            "resource_type": resource_type,
            "created_at": _iso(stat.st_mtime),
            "tags": [],
            "bytes": stat.st_size,
            "type": type,
            "placeholder": False,
            "url": url,
            "secure_url": url,
            "folder": public_id.rpartition("/")[0],
            "asset_folder": public_id.rpartition("/")[0],
            "api_key": self.api_key,
            **extra,
        }

    # ---- Upload API
    async def upload_api(
        self, request: Request[Any, Any, Any], cloud: str, resource_type: str, action: str
    ) -> Response[Any]:
        if cloud != self.cloud:
            return _error(401, f"Invalid cloud_name {cloud}")
        if not _NAME.match(resource_type):
            return _error(400, f"Invalid resource type {resource_type}")
        form = await request.form()
        fields: list[tuple[str, str]] = []
        upload: UploadFile | None = None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                upload = value if name == "file" else upload
            else:
                fields.append((name, str(value)))
        refusal = self._check_signed(fields)
        if refusal is not None:
            self.calls["refused"] += 1
            return refusal
        params = dict(fields)
        handlers = {
            "upload": self._upload,
            "explicit": self._explicit,
            "rename": self._rename,
            "destroy": self._destroy,
        }
        if action not in handlers:
            return _error(404, f"Unsupported action {action}")
        if action != "upload":
            self.calls[action] += 1  # uploads count themselves: "upload" or "upload-chunk"
        return await handlers[action](request, resource_type, params, upload)

    async def _upload(
        self, request: Request[Any, Any, Any], resource_type: str, params: dict[str, str], upload: UploadFile | None
    ) -> Response[Any]:
        if upload is None:
            return _error(400, "Missing required parameter - file")
        public_id = params.get("public_id") or secrets.token_hex(10)
        if params.get("folder"):
            public_id = f"{params['folder'].strip('/')}/{public_id}"
        kind = params.get("type", "upload")
        try:
            target = self.asset_path(public_id, resource_type, kind)
        except ValueError:
            return _error(400, f"Invalid public_id {public_id}")
        data = await upload.read()
        content_range = request.headers.get("content-range")
        self.calls["upload-chunk" if content_range else "upload"] += 1  # counted on arrival
        if self.upload_delay:
            await asyncio.sleep(self.upload_delay)
        if content_range:  # one part of upload_large
            match = _CONTENT_RANGE.match(content_range)
            upload_id = request.headers.get("x-unique-upload-id", "")
            if not match or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", upload_id):
                return _error(400, "Invalid Content-Range or X-Unique-Upload-Id")
            first, last, total = (int(group) for group in match.groups())
            if len(data) != last - first + 1 or last >= total:
                return _error(400, f"Chunk of {len(data)} bytes does not match Content-Range {content_range}")
            part = self.directory / ".uploads" / upload_id
            await asyncio.to_thread(_write_at, part, first, data)
            received = self._sessions[upload_id] = self._sessions.get(upload_id, 0) + len(data)
            if received < total:
                return Response({"done": False, "public_id": public_id, "upload_id": upload_id, "bytes": received})
            del self._sessions[upload_id]
            source = part
        else:
            if not data:
                return _error(400, "Empty file")
            source = self.directory / ".uploads" / secrets.token_hex(12)
            await asyncio.to_thread(_write_at, source, 0, data)
        overwrite = params.get("overwrite", "1") in ("1", "true")
        existed = await asyncio.to_thread(_place, source, target, overwrite)
        self.calls["stored"] += 1
        if existed and not overwrite:
            return Response(self._resource(public_id, resource_type, kind, existing=True))
        etag = await asyncio.to_thread(_md5_file, target)
        original = Path(upload.filename or "file").stem
        return Response(self._resource(public_id, resource_type, kind, etag=etag, original_filename=original))

    async def _explicit(
        self, request: Request[Any, Any, Any], resource_type: str, params: dict[str, str], upload: UploadFile | None
    ) -> Response[Any]:
        public_id, kind = params.get("public_id", ""), params.get("type", "upload")
        try:
            found = self.asset_path(public_id, resource_type, kind).is_file()
        except ValueError:
            found = False
        if not found:
            return _error(404, f"Resource not found - {public_id}")
        return Response(self._resource(public_id, resource_type, kind))

    async def _rename(
        self, request: Request[Any, Any, Any], resource_type: str, params: dict[str, str], upload: UploadFile | None
    ) -> Response[Any]:
        source_id, target_id = params.get("from_public_id", ""), params.get("to_public_id", "")
        kind = params.get("type", "upload")
        to_kind = params.get("to_type") or kind
        try:
            source = self.asset_path(source_id, resource_type, kind)
            target = self.asset_path(target_id, resource_type, to_kind)
        except ValueError:
            return _error(400, "Invalid from_public_id or to_public_id")
        if not source.is_file():
            return _error(404, f"Resource not found - {source_id}")
        if target.exists() and params.get("overwrite") not in ("1", "true"):
            return _error(409, f"to_public_id ({target_id}) already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return Response(self._resource(target_id, resource_type, to_kind))

    async def _destroy(
        self, request: Request[Any, Any, Any], resource_type: str, params: dict[str, str], upload: UploadFile | None
    ) -> Response[Any]:
        try:
            path = self.asset_path(params.get("public_id", ""), resource_type, params.get("type", "upload"))
            path.unlink()
        except (ValueError, FileNotFoundError):
            return Response({"result": "not found"})
        return Response({"result": "ok"})

    # ---- Admin API
    async def list_resources(
        self, request: Request[Any, Any, Any], cloud: str, resource_type: str, type: str
    ) -> Response[Any]:
        self.calls["resources"] += 1
        if cloud != self.cloud:
            return _error(401, f"Invalid cloud_name {cloud}")
        refusal = self._check_basic_auth(request)
        if refusal is not None:
            self.calls["refused"] += 1
            return refusal
        if not (_NAME.match(resource_type) and _NAME.match(type)):
            return _error(400, "Invalid resource type")
        prefix = request.query_params.get("prefix", "")
        max_results = max(1, min(int(request.query_params.get("max_results", "10")), 500))
        cursor = request.query_params.get("next_cursor")
        after = base64.urlsafe_b64decode(cursor.encode()).decode() if cursor else ""
        root = self.directory / resource_type / type
        ids = [public_id for public_id in await asyncio.to_thread(_walk, root) if public_id.startswith(prefix)]
        ids = sorted(public_id for public_id in ids if public_id > after)
        page = ids[:max_results]
        body: dict[str, Any] = {"resources": [self._resource(public_id, resource_type, type) for public_id in page]}
        if len(ids) > max_results:
            body["next_cursor"] = base64.urlsafe_b64encode(page[-1].encode()).decode()
        reset = time.strftime("%a, %d %b %Y %H:00:00 GMT", time.gmtime(time.time() + 3600))
        headers = {"x-featureratelimit-limit": "500", "x-featureratelimit-remaining": "499"}
        return Response(body, headers={**headers, "x-featureratelimit-reset": reset})

    # ---- delivery
    async def deliver(
        self, request: Request[Any, Any, Any], cloud: str, resource_type: str, type: str
    ) -> Response[Any]:
        self.calls["delivery"] += 1
        if cloud != self.cloud:
            return _cld_refusal(404, "Invalid cloud name")
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        rest = raw_path.decode("latin-1").split(f"/{cloud}/{resource_type}/{type}/", 1)[-1]
        signature = None
        if match := re.match(r"s--([A-Za-z0-9_-]+)--/", rest):
            signature, rest = match.group(1), rest[match.end() :]
        if match := re.match(r"v\d+/", rest):
            rest = rest[match.end() :]
        if type == "private":
            return _cld_refusal(401, "Private resources are delivered through the download API only")
        if type == "authenticated":
            if signature is None:
                return _cld_refusal(401, "Missing signature")
            if not hmac.compare_digest(signature, self.url_signature(rest, len(signature))):
                self.calls["refused"] += 1
                return _cld_refusal(401, "Signature mismatch")
        try:
            path = self.asset_path(unquote(rest), resource_type, type)
            size = path.stat().st_size if path.is_file() else -1
        except ValueError:
            size = -1
        if size < 0:
            return _cld_refusal(404, "Resource not found")
        status, start, end = 200, 0, size - 1
        headers = {
            "accept-ranges": "bytes",
            "etag": f'"{hashlib.md5(str(path.stat().st_mtime_ns).encode()).hexdigest()}"',
        }
        if (match := _RANGE.match(request.headers.get("range", "").strip())) and any(match.groups()):
            first, last = match.groups()
            if first:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
            else:
                start = max(size - int(last), 0)
            if start >= size or start > end:
                return Response(b"", status_code=416, headers={"content-range": f"bytes */{size}"})
            status = 206
            headers["content-range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        headers["content-length"] = str(length)
        if request.method == "HEAD":
            return Response(b"", status_code=status, headers=headers, media_type="application/octet-stream")
        return Stream(
            _read(path, start, length), status_code=status, headers=headers, media_type="application/octet-stream"
        )

    # ---- server
    def app(self) -> Litestar:
        standin = self

        @post("/v1_1/{cloud:str}/{resource_type:str}/{action:str}", status_code=200)
        async def upload_api(
            request: Request[Any, Any, Any], cloud: str, resource_type: str, action: str
        ) -> Response[Any]:
            return await standin.upload_api(request, cloud, resource_type, action)

        @get("/v1_1/{cloud:str}/resources/{resource_type:str}/{kind:str}")
        async def list_resources(
            request: Request[Any, Any, Any], cloud: str, resource_type: str, kind: str
        ) -> Response[Any]:
            return await standin.list_resources(request, cloud, resource_type, kind)

        @route("/{cloud:str}/{resource_type:str}/{kind:str}/{rest:path}", http_method=[HttpMethod.GET, HttpMethod.HEAD])
        async def deliver(request: Request[Any, Any, Any], cloud: str, resource_type: str, kind: str) -> Response[Any]:
            return await standin.deliver(request, cloud, resource_type, kind)

        # logging_config=None: an in-process stand-in must not reconfigure the test process's logging
        return Litestar([upload_api, list_resources, deliver], request_max_body_size=1 << 31, logging_config=None)

    def bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        return sock

    def server(self) -> uvicorn.Server:
        config = uvicorn.Config(self.app(), lifespan="off", log_level="warning", access_log=False, loop="asyncio")
        self._server = uvicorn.Server(config)
        return self._server

    def start(self) -> Self:
        """Serve from a background thread; returns once listening."""
        sock = self.bind()
        server = self.server()
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="cloudinary-standin", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Cloudinary stand-in did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _write_at(path: Path, offset: int, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _place(source: Path, target: Path, overwrite: bool) -> bool:
    """Move an uploaded file into place; True if the target existed (and, without overwrite, was kept)."""
    existed = target.exists()
    if existed and not overwrite:
        source.unlink()
        return True
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    return existed


def _md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _walk(root: Path) -> list[str]:
    found: list[str] = []
    for directory, _, files in os.walk(root):
        found.extend(Path(directory, name).relative_to(root).as_posix() for name in files)
    return found


async def _read(path: Path, start: int, length: int) -> AsyncIterator[bytes]:
    file = await asyncio.to_thread(open, path, "rb")
    try:
        await asyncio.to_thread(file.seek, start)
        while length > 0:
            block = await asyncio.to_thread(file.read, min(length, 256 * 1024))
            if not block:
                break
            length -= len(block)
            yield block
    finally:
        file.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local stand-in for Cloudinary (tests only).")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dir", required=True, help="where the assets are kept")
    parser.add_argument("--cloudinary-url", default="", help="cloudinary://key:secret@cloud (default: built-in)")
    parser.add_argument("--signature-algorithm", default="sha1", choices=sorted(_DIGESTS))
    args = parser.parse_args(argv)
    options: dict[str, Any] = {"host": args.host, "port": args.port, "signature_algorithm": args.signature_algorithm}
    if args.cloudinary_url:
        standin = CloudinaryStandIn.from_cloudinary_url(args.dir, args.cloudinary_url, **options)
    else:
        standin = CloudinaryStandIn(args.dir, **options)
    sock = standin.bind()
    print(f"CLOUDINARY_STANDIN_URL={standin.url}", flush=True)
    print(f"CLOUDINARY_URL={standin.cloudinary_url}", flush=True)
    standin.server().run(sockets=[sock])


if __name__ == "__main__":
    main()
