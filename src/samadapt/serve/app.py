"""The FastAPI application of ``samadapt serve`` and how to run it.

API (JSON unless stated; ``{sid}`` = a session id from opening a volume; coordinates in the slice frame):

=========================================  ===================================================================
``GET  /``                                  the page (``static/index.html``)
``GET  /api/info``                          model, limits, whether automatic mode and a data folder exist
``GET  /api/volumes``                       volumes of the data folder (relative paths)
``POST /api/volumes``                       open one: ``{"path": "case.nii.gz"}`` -> session description
``POST /api/uploads?filename=x.nii.gz``     open an uploaded file (raw request body, size-limited)
``GET  /api/volumes/{sid}``                 the session description; ``DELETE`` closes it
``GET  /api/volumes/{sid}/slices/{k}.png``  slice ``k`` as PNG, ``?window=abdomen`` (or ``W,L``, percentiles)
``GET  /api/volumes/{sid}/labels/{k}``      label slice ``k`` as run lengths, with the class table
``GET  /api/volumes/{sid}/voxels/{k}``      ``?x=&y=``: raw value (HU for CT) and position (mm) of a pixel
``POST /api/volumes/{sid}/embed``           embed a slice ahead of the first click: ``{"slice", "window"}``
``POST /api/volumes/{sid}/predict``         preview a mask: ``{"slice", "window", "box", "points", "labels"}``
``POST /api/volumes/{sid}/auto``            preview the adapter's mask: ``{"slice", "window", "class_name"}``
``POST /api/volumes/{sid}/commit``          ``{"prediction_id", "class_name"}``: paint the preview as that class
``POST /api/volumes/{sid}/undo``            revert the last commit
``GET  /api/volumes/{sid}/labels.nii.gz``   the label volume, NIfTI, the volume's exact geometry
``GET  /api/volumes/{sid}/labels.json``     its class table ``{"background": 0, name: value}``
=========================================  ===================================================================

Security: the server binds ``127.0.0.1`` unless told otherwise; requests must name an allowed ``Host``
(against DNS rebinding) and state-changing requests from another ``Origin`` are refused; volumes are read
only from the data folder (:class:`~samadapt.serve.data_folder.DataFolder`; what its listing hides cannot
be opened by name) or from uploads, which stream to a private temporary folder and stop at
``max_upload_bytes`` (413), and are decompressed under a byte budget before they are read
(:mod:`samadapt.serve.decompress`); any other body stops at ``max_body_bytes`` (413,
:mod:`samadapt.serve.body_limit`); every body is a pydantic model (422 with JSON ``detail``); user errors
answer JSON ``{"detail": "..."}`` (400, 403, 404, 409, 413, 422), and anything unexpected a bare 500
``{"detail": "internal error"}``; no traceback ever reaches a client.
The page's inline script is allowed by its sha256 in a strict Content-Security-Policy.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import shutil
import tempfile
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from samadapt.errors import ConfigError, InputFileError, PromptError, SamadaptError
from samadapt.io.volume import VOLUME_SUFFIXES, read_volume
from samadapt.models.sam import LoadedModel
from samadapt.serve.body_limit import BodySizeLimit
from samadapt.serve.data_folder import DataFolder, OutsideDataFolderError, VolumeNotFoundError
from samadapt.serve.decompress import gunzip_within
from samadapt.serve.schemas import WINDOW_NAME, AutoRequest, CommitRequest, OpenVolume, PromptRequest, SliceRequest
from samadapt.serve.sessions import (
    HEADER_BYTES,
    AutoUnavailableError,
    NothingToUndoError,
    ServeSettings,
    SessionNotFoundError,
    SessionStore,
    VolumeSession,
    VolumeTooLargeError,
    check_volume_header,
    volume_byte_budget,
)

try:
    from fastapi import FastAPI, Query, Request
    from fastapi import Path as PathParam
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as err:  # pragma: no cover - exercised only in installs without the extra
    raise ConfigError("the web app needs FastAPI and uvicorn: pip install 'samadapt[serve]'") from err

LOG = logging.getLogger("samadapt.serve")
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")  # single-file formats (no detached headers)
SESSION_ID = r"^[0-9a-f]{32}$"
UPLOAD_PATH = "/api/uploads"  # the one route whose body is not JSON (its own limit: max_upload_bytes)


class UploadTooLargeError(InputFileError):
    """An upload exceeds ``max_upload_bytes``."""


STATUS = [(OutsideDataFolderError, 403), (VolumeNotFoundError, 404), (SessionNotFoundError, 404),
          (VolumeTooLargeError, 413), (UploadTooLargeError, 413), (NothingToUndoError, 409),
          (AutoUnavailableError, 409), (PromptError, 422), (SamadaptError, 400)]


def page_html() -> str:
    """The page's HTML (``samadapt/serve/static/index.html``)."""
    return (resources.files("samadapt") / "serve" / "static" / "index.html").read_text(encoding="utf-8")


def _script_hashes(html: str) -> list[str]:
    """CSP sources (``'sha256-...'``) for every inline ``<script>`` block of ``html``."""
    blocks = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks]


def upload_suffix(filename: str) -> str:
    """The volume suffix of an uploaded file's name; :class:`InputFileError` for anything else."""
    lower = filename.lower()
    for suffix in UPLOAD_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    raise InputFileError(f"{filename}: upload a single-file volume ({', '.join(UPLOAD_SUFFIXES)}); "
                         "DICOM series and detached headers are opened from the data folder")


def default_allowed_hosts(host: str) -> list[str]:
    """Host names a browser may use to reach a server bound to ``host``."""
    return sorted({host, "127.0.0.1", "localhost", "[::1]"})


def create_app(loaded: LoadedModel, settings: ServeSettings | None = None, adapter: Any = None,
               model_label: str = "", allowed_hosts: list[str] | None = None) -> FastAPI:
    """The web app over one model (and optionally a ProMISe adapter); see the module docstring.

    ``allowed_hosts``: accepted ``Host`` header names (default: loopback names; tests add ``testserver``).
    """
    settings = settings or ServeSettings()
    onnx = None
    if settings.decoder == "onnx":  # one exported graph for every session
        from samadapt.inference.onnx_decoding import OnnxDecoding

        onnx = OnnxDecoding(loaded, adapter)
        onnx.prepare()  # exported before the first request: the first click must not wait for it
    data = DataFolder(settings.data_dir) if settings.data_dir is not None else None
    store = SessionStore(settings.max_sessions)
    upload_dir = Path(tempfile.mkdtemp(prefix="samadapt-uploads-"))
    html = page_html()
    csp = ("default-src 'none'; img-src 'self' data: blob:; style-src 'unsafe-inline'; connect-src 'self'; "
           f"script-src {' '.join(_script_hashes(html))}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        store.close_all()
        shutil.rmtree(upload_dir, ignore_errors=True)

    app = FastAPI(title="samadapt", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.store, app.state.settings, app.state.upload_dir, app.state.onnx = store, settings, upload_dir, onnx
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, exempt=(UPLOAD_PATH,))

    def hide(message: str) -> str:
        message = message.replace(str(upload_dir), "<upload>")
        return data.hide(message) if data is not None else message

    hosts = set(allowed_hosts or default_allowed_hosts("127.0.0.1"))

    @app.middleware("http")
    async def same_origin_and_headers(request: Request, call_next):
        host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
        if "*" not in hosts and host not in hosts and f"[{host}]" not in hosts:
            return JSONResponse({"detail": "unexpected Host header; open the page at the address the server printed"},
                                status_code=400)
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD", "OPTIONS") and origin is not None:
            if urlsplit(origin).netloc != request.headers.get("host", ""):
                return JSONResponse({"detail": "cross-origin request refused"}, status_code=403)
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(SamadaptError)
    async def user_error(_request: Request, err: SamadaptError) -> JSONResponse:
        status = next(code for kind, code in STATUS if isinstance(err, kind))
        return JSONResponse({"detail": hide(str(err))}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, err: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in err.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(err.detail)}, status_code=err.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, err: Exception) -> JSONResponse:
        LOG.error("internal error: %s", type(err).__name__, exc_info=err)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)

    def session(sid: str) -> VolumeSession:
        return store.get(sid)

    def open_session(path: Path, name: str, owned: Path | None = None) -> dict:
        try:
            try:
                check_volume_header(path, settings.max_voxels, name)
                if owned is not None:  # an upload: decompressed within the budget (its header is the same)
                    path = owned = gunzip_within(path, volume_byte_budget(settings.max_voxels) + HEADER_BYTES, name)
                volume = read_volume(path)
            except SamadaptError as err:  # name the file as the client knows it
                raise type(err)(str(err).replace(str(path), name)) from None
            with store.lock:
                created = store.add(VolumeSession(name, volume, loaded, adapter, settings, owned, onnx))
                return created.describe()
        except BaseException:
            if owned is not None:
                owned.unlink(missing_ok=True)
            raise

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": csp})

    @app.get("/api/info")
    def info() -> dict:
        return {"model": model_label or loaded.spec.name, "image_size": loaded.spec.image_size,
                "auto": adapter is not None and bool(getattr(adapter, "has_apm", False)),
                "data_folder": data is not None, "max_upload_bytes": settings.max_upload_bytes,
                "upload_suffixes": list(UPLOAD_SUFFIXES)}

    @app.get("/api/volumes")
    def volumes() -> dict:
        return {"data_folder": data is not None, "volumes": data.list_volumes() if data is not None else []}

    @app.post("/api/volumes")
    def open_volume(body: OpenVolume) -> dict:
        if data is None:
            raise VolumeNotFoundError("this server has no data folder (start it with --data DIR); upload a volume")
        return open_session(data.resolve(body.path), body.path)

    @app.post(UPLOAD_PATH)
    async def upload(request: Request, filename: str = Query(min_length=1, max_length=255)) -> dict:
        suffix = upload_suffix(filename)
        limit = settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise UploadTooLargeError(f"{filename}: {int(declared)} bytes exceed the upload limit of {limit} bytes")
        target = upload_dir / f"{uuid.uuid4().hex}{suffix}"
        size = 0
        try:
            with open(target, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise UploadTooLargeError(f"{filename}: upload exceeds the limit of {limit} bytes")
                    out.write(chunk)
            if size == 0:
                raise InputFileError(f"{filename}: the upload is empty; send the file as the request body")
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return await run_in_threadpool(open_session, target, Path(filename).name, target)

    sid_param = PathParam(pattern=SESSION_ID)
    slice_param = PathParam(ge=0, le=100000)

    @app.get("/api/volumes/{sid}")
    def describe(sid: str = sid_param) -> dict:
        with store.lock:
            return session(sid).describe()

    @app.delete("/api/volumes/{sid}")
    def close(sid: str = sid_param) -> dict:
        session(sid)
        store.remove(sid)
        return {"closed": sid}

    @app.get("/api/volumes/{sid}/slices/{k}.png")
    def slice_png(sid: str = sid_param, k: int = slice_param,
                  window: str = Query("default", pattern=WINDOW_NAME)) -> Response:
        with store.lock:
            return Response(session(sid).slice_png(k, window), media_type="image/png")

    @app.get("/api/volumes/{sid}/labels/{k}")
    def label_slice(sid: str = sid_param, k: int = slice_param) -> dict:
        with store.lock:
            current = session(sid)
            current.slices("default").check_index(k)
            return current.label_slice(k)

    @app.get("/api/volumes/{sid}/voxels/{k}")
    def voxel(sid: str = sid_param, k: int = slice_param, x: int = Query(ge=0, le=100000),
              y: int = Query(ge=0, le=100000)) -> dict:
        with store.lock:
            return session(sid).voxel(k, x, y)

    @app.post("/api/volumes/{sid}/embed")
    def embed(body: SliceRequest, sid: str = sid_param) -> dict:
        with store.lock:
            return session(sid).embed(body.slice, body.window)

    @app.post("/api/volumes/{sid}/predict")
    def predict(body: PromptRequest, sid: str = sid_param) -> dict:
        with store.lock:
            return session(sid).predict(body)

    @app.post("/api/volumes/{sid}/auto")
    def auto(body: AutoRequest, sid: str = sid_param) -> dict:
        with store.lock:
            return session(sid).predict_auto(body)

    @app.post("/api/volumes/{sid}/commit")
    def commit(body: CommitRequest, sid: str = sid_param) -> dict:
        with store.lock:
            return session(sid).commit(body)

    @app.post("/api/volumes/{sid}/undo")
    def undo(sid: str = sid_param) -> dict:
        with store.lock:
            return session(sid).undo()

    @app.get("/api/volumes/{sid}/labels.nii.gz")
    def download(sid: str = sid_param) -> Response:
        with store.lock:
            current = session(sid)
            payload = current.labels_nifti()
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(current.name).name)
        for suffix in VOLUME_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        return Response(payload, media_type="application/gzip",
                        headers={"Content-Disposition": f'attachment; filename="{stem}_labels.nii.gz"'})

    @app.get("/api/volumes/{sid}/labels.json")
    def label_table(sid: str = sid_param) -> dict:
        with store.lock:
            return session(sid).class_table()

    return app


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
