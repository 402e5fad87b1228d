"""The local viewer: a Flask app with one page and a small JSON API around a :class:`~fedmrg.inference.predict.Predictor`.

Routes:

- ``GET /``: the page (drop or pick a DICOM / PNG / JPEG; shows the image as the model reads it, the draft report
  generic and personalized side by side, and the 14 observations with state and confidence).
- ``GET /api/model``: ``{"site", "personalized", "method", "image_size", "source", "max_upload_mb"}``.
- ``POST /api/predict`` (multipart field ``file``): ``{"name", "width", "height", "preview_png" (base64 PNG,
  longest side <= 512 px), "generic": Prediction, "personalized": Prediction or null, "seconds"}``.
  Errors are JSON ``{"error": message}``: 400 for a file that is not a readable image (the message names it), 413
  above the upload limit; the server keeps serving.

Uploads are decoded in memory and a temporary folder that is removed at once; nothing is stored. One prediction
runs at a time (a lock around the model).
"""

from __future__ import annotations

import base64
import io
import threading
import time
from importlib import resources
from typing import Any

import numpy as np
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from fedmrg.errors import DataError
from fedmrg.inference.predict import Predictor

PREVIEW_MAX_SIDE = 512


def preview_png(image: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """An 8-bit PNG of a ``float32 (H, W)`` image in [0, 1], shrunk so its longest side is at most ``max_side``."""
    from PIL import Image

    img = Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8), mode="L")
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def create_app(predictor: Predictor, *, source: str = "", max_upload_mb: float = 64.0) -> Flask:
    """The viewer app for ``predictor``.

    Args:
        predictor: the loaded model; personalized predictions when it holds a site's specialized adapter.
        source: what the page shows as the model's origin (e.g. the ``--model`` path).
        max_upload_mb: uploads above this size are refused with 413 (MiB).
    """
    if max_upload_mb <= 0:
        raise ValueError(f"`max_upload_mb` must be > 0, got {max_upload_mb}")
    app = Flask("fedmrg.serve")
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    lock = threading.Lock()
    page = resources.files("fedmrg.serve").joinpath("static", "index.html").read_text(encoding="utf-8")
    cfg = predictor.loaded.config.model
    model_info = {
        "site": predictor.loaded.private_site,
        "personalized": predictor.has_personalized,
        "method": cfg.method,
        "image_size": cfg.encoder.image_size,
        "source": source,
        "max_upload_mb": max_upload_mb,
    }

    @app.get("/")
    def index() -> Any:
        return page, 200, {"Content-Type": "text/html; charset=utf-8"}

    @app.get("/api/model")
    def model() -> Any:
        return jsonify(model_info)

    @app.post("/api/predict")
    def predict() -> Any:
        from fedmrg.data.images import load_image_bytes

        upload = request.files.get("file")
        if upload is None:
            return jsonify(error="no file in the request (multipart field `file`)"), 400
        name = upload.filename or "upload"
        data = upload.read()
        if not data:
            return jsonify(error=f"{name}: empty file"), 400
        try:
            image = load_image_bytes(data, name=name)
        except DataError as e:
            return jsonify(error=str(e)), 400
        start = time.perf_counter()
        with lock:
            generic = predictor.predict_arrays([image], [name], generic_only=True)[0]
            personal = predictor.predict_arrays([image], [name])[0] if predictor.has_personalized else None
        return jsonify(
            name=name,
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            preview_png=base64.b64encode(preview_png(image)).decode("ascii"),
            generic=generic.to_dict(),
            personalized=personal.to_dict() if personal else None,
            seconds=round(time.perf_counter() - start, 3),
        )

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(e: RequestEntityTooLarge) -> Any:
        return jsonify(error=f"file too large: the limit is {max_upload_mb:g} MB (fedmrg serve --max-upload-mb)"), 413

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Any:
        return jsonify(error=f"{e.code} {e.name}: {e.description}"), e.code

    return app
