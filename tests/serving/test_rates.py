"""Sample rates on the server: every audio stream declares the rate of its samples.

An 8 kHz stream into the 16 kHz test model is resampled per stream and ends equal to offline prediction
(``rnnstream.api.Model.predict``); int16 and float32 frames of the same audio predict the same (one codec
scale); resumes declare the snapshot's rate; ``POST /predict`` uses a file's own rate and needs
``sample_rate`` for raw samples; the CLI client sends a file at its own rate.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from rnnstream.pipeline.audio_io import write_audio
from rnnstream.pipeline.streaming import StreamSession
from rnnstream.serving import client as client_cli
from rnnstream.serving.client import StreamClient
from rnnstream.serving.protocol import ServerError, audio_payload
from rnnstream.serving.server import ServerConfig, StreamServer

from rnnstream.api import Model
from tests.serving._helpers import (
    RATE,
    assert_matches,
    assert_scores,
    audio_backend,
    chunk_sizes,
    run,
    signal,
)

SLOW = 8000  # a client rate other than the model's 16 kHz


def quantised(x: np.ndarray) -> np.ndarray:
    """What an int16 frame of ``x`` decodes to: round(x * 32768) / 32768."""
    return (np.clip(np.round(x * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)


def _http(url: str, data: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def _send_all(client: StreamClient, name: str, chunks: list[np.ndarray], rate: int, dtype: str = "float32"):
    stream = await client.start(name, sample_rate=rate, dtype=dtype)
    for c in chunks:
        await stream.send(c)
        await asyncio.sleep(0)
    ended = await stream.end()
    return stream, ended


def test_streams_at_other_rates_are_resampled_and_end_equal_to_offline():
    """8 kHz, 16 kHz and 22.05 kHz streams batched together; each equals its own session chunk by chunk and
    ends equal to offline prediction over the whole signal (scores within 1e-5)."""
    backend = audio_backend()
    rates = [SLOW, RATE, 22050, SLOW]
    signals = [signal(20 + i, 0.5, rate=r) for i, r in enumerate(rates)]
    splits = [np.split(x, np.cumsum(chunk_sizes(i, x.size, 300, 1500))[:-1]) for i, x in enumerate(signals)]

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None, max_batch=8, max_wait_ms=10.0)) as server:
            async with StreamClient(server.url) as client:
                return await asyncio.gather(*(_send_all(client, f"r{i}", splits[i], r) for i, r in enumerate(rates)))

    out = run(main())
    model = Model(backend)
    for (stream, ended), x, chunks, rate in zip(out, signals, splits, rates):
        assert stream.started["sample_rate"] == rate
        session = StreamSession(backend, sample_rate=rate)
        for msg, c in zip(stream.predictions, chunks, strict=True):
            assert_matches(msg, session.push(c))
        offline = model.predict(x, sample_rate=rate)
        assert ended["predicted"] == offline.label and ended["frames"] == offline.frames
        assert_scores(ended["scores"], offline.scores, 1e-5)
        assert abs(ended["t"] - x.size / rate) < 1e-6


def test_int16_and_float32_frames_of_the_same_audio_predict_the_same():
    backend = audio_backend(2)
    x = signal(31, 0.6, rate=SLOW)
    chunks = np.split(x, 6)

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None, max_batch=1)) as server:
            async with StreamClient(server.url) as client:
                a = await _send_all(client, "pcm", [audio_payload(c, "int16") for c in chunks], SLOW, "int16")
                b = await _send_all(client, "float", [quantised(c) for c in chunks], SLOW, "float32")
                return a, b

    (pcm, pcm_end), (flt, flt_end) = run(main())

    def strip(m: dict) -> dict:
        return {k: v for k, v in m.items() if k not in ("stream", "channel")}

    assert [strip(m) for m in pcm.predictions] == [strip(m) for m in flt.predictions]
    assert strip(pcm_end) == strip(flt_end)
    assert_scores(pcm_end["scores"], Model(backend).predict(quantised(x), sample_rate=SLOW).scores, 1e-5)


def test_resume_must_declare_the_snapshots_rate(tmp_path):
    backend = audio_backend()
    x = signal(41, 0.8, rate=SLOW)
    chunks = np.split(x, 8)

    async def main():
        cfg = ServerConfig(port=0, http_port=None, snapshot_dir=str(tmp_path))
        async with StreamServer(backend, cfg) as server:
            async with StreamClient(server.url) as client:
                s = await client.start("slow", sample_rate=SLOW)
                for c in chunks[:4]:
                    await s.send(c)
                first = await s.end(snapshot=True, save=True)
            token = first["saved"]
            saved = json.loads((tmp_path / f"{token}.json").read_text())
            errors = {}
            for name, kw in {"missing": {}, "other": {"sample_rate": RATE}}.items():
                async with StreamClient(server.url) as client:
                    with pytest.raises(ServerError) as info:
                        await client.start(resume=token, **kw)
                    errors[name] = info.value
            async with StreamClient(server.url) as client:  # a refused resume left the snapshot in place
                r = await client.start(resume=token, sample_rate=SLOW)
                for c in chunks[4:]:
                    await r.send(c)
                final = await r.end()
            return first, saved, errors, r, final

    first, saved, errors, r, final = run(main())
    assert saved["sample_rate"] == SLOW and saved["stream"] == "slow" and r.id == "slow"
    missing, other = errors["missing"], errors["other"]
    assert missing.code == "bad_sample_rate" and missing.close_code == 1008
    assert "'sample_rate'" in missing.message and "8000 Hz" in missing.message
    assert other.code == "bad_sample_rate" and "16000 Hz" in other.message and "8000 Hz" in other.message
    assert r.started["resumed"] and r.started["sample_rate"] == SLOW and r.started["seq"] == 4
    model = Model(backend)
    assert_scores(first["scores"], model.predict(np.concatenate(chunks[:4]), sample_rate=SLOW).scores, 1e-5)
    assert_scores(final["scores"], model.predict(x, sample_rate=SLOW).scores, 1e-5)  # == uninterrupted


def test_http_predict_takes_the_files_rate_and_needs_it_for_raw_samples(tmp_path):
    backend = audio_backend()
    x = signal(51, 0.7, rate=SLOW)
    wav = tmp_path / "slow.wav"
    write_audio(wav, x, SLOW, subtype="FLOAT")
    pcm = audio_payload(x, "int16").tobytes()

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=0)) as server:
            base = server.http_url + "/predict"
            calls = {
                "wav": (base + "?name=slow.wav", wav.read_bytes()),
                "wav_same_rate": (base + f"?name=slow.wav&sample_rate={SLOW}", wav.read_bytes()),
                "wav_other_rate": (base + f"?name=slow.wav&sample_rate={RATE}", wav.read_bytes()),
                "raw_int16": (base + f"?dtype=int16&sample_rate={SLOW}", pcm),
                "raw_no_rate": (base + "?dtype=float32", x.tobytes()),
                "raw_bad_rate": (base + "?dtype=float32&sample_rate=fast", x.tobytes()),
            }
            return {k: await asyncio.to_thread(_http, *v) for k, v in calls.items()}

    out = run(main())
    model = Model(backend)
    offline = model.predict(str(wav))
    for key in ("wav", "wav_same_rate"):
        status, res = out[key]
        assert status == 200 and res["predicted"] == offline.label and res["frames"] == offline.frames
        assert_scores(res["scores"], offline.scores, 1e-5)
        assert abs(res["t"] - x.size / SLOW) < 1e-6
    status, res = out["raw_int16"]
    assert status == 200
    assert_scores(res["scores"], model.predict(quantised(x), sample_rate=SLOW).scores, 1e-5)
    status, res = out["wav_other_rate"]
    assert status == 400 and res["error"] == "SampleRateError"
    assert "8000 Hz" in res["message"] and "16000 Hz" in res["message"]
    status, res = out["raw_no_rate"]
    assert status == 400 and "sample_rate" in res["message"] and "16000 Hz" in res["message"]
    assert out["raw_bad_rate"][0] == 400 and "'fast'" in out["raw_bad_rate"][1]["message"]


def test_cli_client_sends_the_files_own_rate(tmp_path, capsys):
    backend = audio_backend()
    x = signal(61, 0.5, rate=SLOW)
    wav = tmp_path / "slow.wav"
    write_audio(wav, x, SLOW, subtype="FLOAT")

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None)) as server:
            return await asyncio.to_thread(client_cli.main, ["--url", server.url, "--input", str(wav), "--streams", "2",
                                                             "--chunk-ms", "100", "--dtype", "int16"])

    assert run(main()) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ended = [m for m in lines if m["type"] == "ended"]
    assert len(ended) == 2 and len([m for m in lines if m["type"] == "prediction"]) == 2 * 5
    offline = Model(backend).predict(quantised(x), sample_rate=SLOW)
    for m in ended:
        assert m["predicted"] == offline.label and abs(m["t"] - 0.5) < 1e-6
        assert_scores(m["scores"], offline.scores, 1e-5)
