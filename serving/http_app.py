"""The HTTP side: one aiohttp application serving the WebSocket endpoint and the HTTP endpoints on one port.

* ``GET /`` (WebSocket upgrade): the streaming protocol (:mod:`rnnstream.serving.ws_handler`).
* ``GET /livez``: 200 while the process serves requests. ``GET /readyz``: 200 once the model is loaded and
  the server started, 503 from the moment shutdown begins. ``GET /health``: the status with stream counts and
  the model (200, or 503 while shutting down).
* ``GET /metrics``: Prometheus text (the server's metrics, process metrics, the model-info series).
* ``POST /predict``: one whole file (see :meth:`HttpMixin._predict`): 200 JSON, or 400/408/411/413 JSON
  ``{"error", "message"}``. Bodies over ``max_body_bytes`` and signals over ``max_predict_s`` seconds are 413.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import TYPE_CHECKING, Any

from aiohttp import web
from rnnstream.pipeline.errors import ConfigError, MessageError, RnnstreamError, SampleRateError
from rnnstream.pipeline.stream_checks import check_sample_rate
from rnnstream.pipeline.streaming import SensorChunk, predict_signal, prediction_fields
from rnnstream.serving import protocol as P

if TYPE_CHECKING:
    from rnnstream.serving.server import StreamServer

_PATHS = ("/", "/health", "/livez", "/readyz", "/metrics", "/predict")


class TooLong(RnnstreamError):
    """A request's signal is longer than ``max_predict_s``."""


class HttpMixin:
    """The aiohttp application (see module doc)."""

    def _make_app(self: StreamServer) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self._count_requests])
        app.router.add_get("/", self._ws_route)
        app.router.add_get("/health", self._health_route)
        app.router.add_get("/livez", self._livez_route)
        app.router.add_get("/readyz", self._readyz_route)
        app.router.add_get("/metrics", self._metrics_route)
        app.router.add_post("/predict", self._predict_route)
        return app

    @staticmethod
    def _json_response(status: int, body: dict[str, Any]) -> web.Response:
        return web.Response(status=status, text=P.dumps(body), content_type="application/json")

    @web.middleware
    async def _count_requests(self: StreamServer, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path if request.path in _PATHS else "other"
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # 404/405/413 from the router or the body reader, as JSON
            code = {404: "not_found", 405: "method", 413: "too_large"}.get(exc.status, "http_error")
            message = {404: f"no such path {request.path!r}; expected /, /health, /livez, /readyz, /metrics or "
                       "POST /predict", 405: f"{request.method} is not allowed on {request.path}"}.get(exc.status,
                                                                                                 exc.text or exc.reason)
            response = self._json_response(exc.status, {"error": code, "message": message})
        if path != "/" or response.status != 101:
            self.metrics.http_requests.labels(path, str(response.status)).inc()
        return response

    async def _health_route(self: StreamServer, request: web.Request) -> web.Response:
        return self._json_response(200 if not self._closing else 503, self.health())

    async def _livez_route(self: StreamServer, request: web.Request) -> web.Response:
        return self._json_response(200, {"status": "alive"})

    async def _readyz_route(self: StreamServer, request: web.Request) -> web.Response:
        ready = self.ready
        return self._json_response(200 if ready else 503, {"status": "ready" if ready else "not_ready",
                                                           "shutting_down": self._closing})

    async def _metrics_route(self: StreamServer, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.metrics.render)
        return web.Response(body=body, headers={"Content-Type": self.metrics.content_type})

    async def _predict_route(self: StreamServer, request: web.Request) -> web.Response:
        cfg = self.config
        length = request.content_length
        if length is None:
            return self._json_response(411, {"error": "length_required", "message": "POST /predict needs a "
                                             "Content-Length body (no chunked transfer encoding)"})
        if length > cfg.max_body_bytes:
            return self._json_response(413, {"error": "too_large", "message": f"body of {length} bytes exceeds the "
                                             f"limit of {cfg.max_body_bytes} bytes"})
        try:
            body = await asyncio.wait_for(request.read(), cfg.http_timeout_s)
        except TimeoutError:
            return self._json_response(408, {"error": "timeout", "message": f"body not received within "
                                             f"{cfg.http_timeout_s:g} s"})
        query = {k: v for k, v in request.query.items()}
        try:
            async with self._predict_slots:
                result = await asyncio.to_thread(self._predict, body, query)
        except TooLong as exc:
            return self._json_response(413, {"error": "too_long", "message": str(exc)})
        except RnnstreamError as exc:
            status = 413 if type(exc).__name__ in ("AudioTooLongError", "AudioTooLargeError") else 400
            return self._json_response(status, {"error": type(exc).__name__, "message": str(exc)})
        return self._json_response(200, result)

    # -- one-shot prediction (a worker thread) -----------------------------------------------------------
    def _predict(self: StreamServer, body: bytes, query: dict[str, str]) -> dict[str, Any]:
        """One-shot prediction of a whole file: offline, ``rnnstream.api.Model.predict``."""
        from rnnstream.api import Model

        if self.info.feature_config.kind == "audio":
            samples, rate = self._audio_body(body, query)
            pred = Model(self.backend).predict(samples, sample_rate=rate)
            t = samples.shape[0] / rate
        else:
            if "sample_rate" in query:
                raise ConfigError("sample_rate does not apply to a sensor model: its table carries timestamps")
            signal = self._sensor_body(body, query)
            pred = predict_signal(self.backend, signal)
            t = float(signal.timestamps[-1]) if signal.timestamps.size else 0.0
        return {**prediction_fields(pred), "frames": 0 if pred is None else pred.frames, "t": round(t, 6)}

    def _audio_body(self: StreamServer, body: bytes, query: dict[str, str]) -> tuple[Any, int]:
        """``(samples, rate)``: an audio file at its own rate (``sample_rate``, if given, must match it), or raw
        ``float32``/``int16`` samples whose ``sample_rate`` the query must give."""
        from rnnstream.pipeline.audio_io import AudioLimits, decode_native

        audio = self.info.feature_config.audio
        if audio is None:
            raise ConfigError("this model takes sensor tables, not audio")
        declared = query_rate(query)
        dtype = query.get("dtype", "file")
        limit = self.config.max_predict_s
        if dtype == "file":
            name = query.get("name", "<request body>")
            samples, rate = decode_native(body, name=name, channel=audio.channel,
                                          limits=AudioLimits(max_seconds=limit), target_rate=audio.sample_rate)
            if declared is not None and declared != rate:
                raise SampleRateError(f"{name}: the file's sample rate is {rate} Hz, not the declared "
                                      f"sample_rate={declared} Hz")
            return samples, rate
        if dtype not in P.AUDIO_DTYPES:
            raise ConfigError(f"dtype must be 'file' (an audio file), 'float32' or 'int16', got {dtype!r}")
        if declared is None:
            raise ConfigError(f"raw {dtype} samples need the sample_rate query parameter (Hz of the samples, e.g. "
                              f"/predict?dtype={dtype}&sample_rate={audio.sample_rate}); this model runs at "
                              f"{audio.sample_rate} Hz (other rates are resampled)")
        seconds = len(body) / P.AUDIO_DTYPES[dtype].itemsize / declared
        if seconds > limit:
            raise TooLong(f"{seconds:.1f} s of {dtype} samples at {declared} Hz exceeds the limit of {limit:g} s "
                          "per request; stream it over the WebSocket instead")
        try:
            return P.decode_audio_payload(body, dtype, where="request body"), declared
        except P.ProtocolError as err:
            raise ConfigError(err.message) from None

    def _sensor_body(self: StreamServer, body: bytes, query: dict[str, str]) -> SensorChunk:
        from rnnstream.pipeline.sensors import read_sensor_table

        fmt = query.get("format", "csv")
        if fmt not in ("csv", "parquet"):
            raise ConfigError(f"format must be 'csv' or 'parquet' for a sensor model, got {fmt!r}")
        with tempfile.TemporaryDirectory(prefix="rnnstream-predict-") as tmp:
            path = os.path.join(tmp, f"body.{fmt}")
            with open(path, "wb") as fh:
                fh.write(body)
            ts, vals = read_sensor_table(path, self.info.feature_config)
        span = float(ts[-1] - ts[0]) if ts.size else 0.0
        if span > self.config.max_predict_s:
            raise TooLong(f"the table spans {span:.1f} s, over the limit of {self.config.max_predict_s:g} s per request")
        return SensorChunk(ts, vals)


def query_rate(query: dict[str, str]) -> int | None:
    """The ``sample_rate`` query parameter as a positive integer (Hz), or None when absent."""
    text = query.get("sample_rate")
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ConfigError(f"sample_rate must be a positive integer (Hz), got {text[:40]!r}")
    try:  # the stream core's bounds, as for a stream's 'start'
        return check_sample_rate(int(text), "query")
    except MessageError as exc:
        raise ConfigError(str(exc)) from None


__all__ = ["HttpMixin", "query_rate"]
