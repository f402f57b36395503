"""The stream job's message format: round trips, accepted dtypes, and every rejection naming its field."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import numpy as np
import pytest
from rnnstream.beam_jobs.messages import (
    MessageError,
    ModelMismatchError,
    PayloadError,
    chunk,
    encode_message,
    parse_message,
    resume,
    validate_for_model,
)
from rnnstream.pipeline.config import FeatureConfig


def b64(arr: np.ndarray) -> str:
    return base64.b64encode(arr.tobytes()).decode()


def test_audio_round_trips_in_every_encoding() -> None:
    x = np.linspace(-0.5, 0.5, 160, dtype=np.float32)
    m = chunk("a", 3, 12.5, audio=x, end=True, model="abc")
    back = parse_message(encode_message(m))
    assert (back.stream, back.seq, back.event_time, back.end, back.model, back.kind) == ("a", 3, 12.5, True, "abc", "chunk")
    np.testing.assert_array_equal(back.audio, x)
    np.testing.assert_array_equal(parse_message(encode_message(m, audio_dtype="list")).audio, x)
    q = parse_message(encode_message(m, audio_dtype="int16")).audio
    assert q.dtype == np.float32
    np.testing.assert_allclose(q, x, atol=1 / 32768)
    raw = json.dumps({"stream": "a", "seq": 0, "event_time": 1,
                      "audio": {"dtype": "int16", "data": b64(np.array([-32768, 0, 16384], "<i2"))}})
    np.testing.assert_array_equal(parse_message(raw).audio, [-1.0, 0.0, 0.5])


def test_int16_uses_the_one_codec_scale() -> None:
    """int16 = round(x * 32768) on the way out, int16 / 32768 on the way in (rnnstream.pipeline.codec)."""
    from rnnstream.pipeline.codec import decode_samples, encode_samples

    x = np.array([-1.0, -0.5, 0.0, 0.25, 0.999], np.float32)
    obj = json.loads(encode_message(chunk("a", 0, 0.0, audio=x, sample_rate=8000), audio_dtype="int16"))
    pcm = np.frombuffer(base64.b64decode(obj["audio"]["data"]), "<i2")
    np.testing.assert_array_equal(pcm, np.round(x * 32768).clip(-32768, 32767))
    assert base64.b64decode(obj["audio"]["data"]) == encode_samples(x, "int16")
    back = parse_message(json.dumps(obj)).audio
    np.testing.assert_array_equal(back, decode_samples(encode_samples(x, "int16"), "int16"))
    # int16 given to the builder is PCM, scaled the same way
    np.testing.assert_array_equal(chunk("a", 0, 0.0, audio=pcm.astype(np.int16)).audio, back)


def test_sample_rate_round_trips_and_is_validated() -> None:
    m = parse_message(encode_message(chunk("a", 0, 1.0, audio=np.zeros(4), sample_rate=16000)))
    assert m.sample_rate == 16000
    assert parse_message(encode_message(chunk("a", 1, 1.0, audio=np.zeros(4)))).sample_rate is None
    r = parse_message(encode_message(resume("a", 5, 1.0, b"snap", sample_rate=8000)))
    assert (r.kind, r.sample_rate) == ("resume", 8000)
    end = parse_message('{"stream": "a", "seq": 0, "event_time": 0, "end": true, "sample_rate": 8000}')
    assert end.end and end.sample_rate == 8000 and end.audio is None
    for bad in (0, -8000, 8000.5, "8000", True):
        with pytest.raises(MessageError, match="'sample_rate' must be a positive integer"):
            parse_message(json.dumps({"stream": "a", "seq": 0, "event_time": 0, "audio": [], "sample_rate": bad}))
    with pytest.raises(MessageError, match="'sample_rate' belongs to audio chunks"):
        parse_message(json.dumps({"stream": "a", "seq": 0, "event_time": 0, "sample_rate": 100,
                                  "sensor": {"timestamps": [0], "values": [[1]]}}))


def test_sensor_payload_as_lists_and_base64() -> None:
    ts = np.array([0.0, 0.5, 1.25])
    vals = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    back = parse_message(encode_message(chunk("p", 0, 0.0, timestamps=ts, values=vals)))
    np.testing.assert_array_equal(back.timestamps, ts)
    np.testing.assert_array_equal(back.values, vals)
    listed = parse_message(json.dumps({"stream": "p", "seq": 1, "event_time": 2.0,
                                       "sensor": {"timestamps": ts.tolist(), "values": vals.tolist()}}))
    np.testing.assert_array_equal(listed.values, vals)
    assert listed.size == 3



def test_encoding_a_sensor_chunk_without_values_is_refused() -> None:
    """A hand-made message with timestamps but no values is an error naming the stream, not a 0-d array."""
    from rnnstream.pipeline.stream_checks import ChunkMessage

    msg = ChunkMessage("pump-1", 3, 0.0, timestamps=np.array([0.0, 0.5]))
    with pytest.raises(MessageError, match=r"pump-1.*seq 3.*timestamps without values"):
        encode_message(msg)


def test_resume_round_trip() -> None:
    back = parse_message(encode_message(resume("a", 7, 1.0, b"\x00snapshot\xff")))
    assert (back.kind, back.seq, back.snapshot) == ("resume", 7, b"\x00snapshot\xff")


@pytest.mark.parametrize(
    "obj, error, words",
    [
        ("[1, 2]", MessageError, "JSON object"),
        ({"seq": 0, "event_time": 0, "audio": []}, MessageError, "'stream'"),
        ({"stream": "a", "seq": -1, "event_time": 0, "audio": []}, MessageError, "'seq'"),
        ({"stream": "a", "seq": True, "event_time": 0, "audio": []}, MessageError, "'seq'"),
        ({"stream": "a", "seq": 0, "audio": []}, MessageError, "'event_time'"),
        ({"stream": "a", "seq": 0, "event_time": 0, "audio": [], "colour": 1}, MessageError, "unknown fields"),
        ({"stream": "a", "seq": 0, "event_time": 0}, MessageError, "needs an 'audio' or 'sensor'"),
        ({"stream": "a", "seq": 0, "event_time": 0, "audio": [], "sensor": {}}, MessageError, "not both"),
        ({"stream": "a", "seq": 0, "event_time": 0, "audio": {"dtype": "float64", "data": ""}}, PayloadError, "dtype 'float64'"),
        ({"stream": "a", "seq": 0, "event_time": 0, "audio": {"dtype": "float32", "data": "AAA"}}, MessageError, "base64"),
        ({"stream": "a", "seq": 0, "event_time": 0, "audio": {"dtype": "float32", "data": "AAAAAAA="}}, PayloadError, "whole number"),
        ({"stream": "a", "seq": 0, "event_time": 0, "audio": [0.1, "x"]}, PayloadError, "list of numbers"),
        ({"stream": "a", "seq": 0, "event_time": 0, "audio": [[0.1], [0.2]]}, PayloadError, "1 dimension"),
        ({"stream": "a", "seq": 0, "event_time": 0, "sensor": {"timestamps": [0, 1], "values": [[1], [2, 3]]}},
         PayloadError, "rectangular"),
        ({"stream": "a", "seq": 0, "event_time": 0, "sensor": {"timestamps": [0, 1], "values": [[1]]}},
         PayloadError, "2 timestamps but 1"),
        ({"stream": "a", "seq": 0, "event_time": 0, "kind": "resume"}, MessageError, "snapshot"),
        ({"stream": "a", "seq": 0, "event_time": 0, "kind": "stop", "audio": []}, MessageError, "'kind'"),
    ],
)
def test_rejections_name_the_field(obj: object, error: type[Exception], words: str) -> None:
    text = obj if isinstance(obj, str) else json.dumps(obj)
    with pytest.raises(error, match=words):
        parse_message(text)


def test_nan_is_rejected_in_every_encoding() -> None:
    x = np.zeros(8, np.float32)
    x[3] = np.nan
    with pytest.raises(PayloadError, match="1 of 8 samples are NaN"):
        parse_message(encode_message(chunk("a", 0, 0.0, audio=x)))
    with pytest.raises(PayloadError, match="NaN"):
        parse_message('{"stream": "a", "seq": 0, "event_time": 0, "audio": [0.0, NaN]}')


def test_validate_for_model() -> None:
    audio = SimpleNamespace(weights_hash="h1", feature_config=FeatureConfig.audio_default(n_mels=8))
    sensor = SimpleNamespace(weights_hash="h1", feature_config=FeatureConfig.sensor_default(["a", "b"]))
    ok = chunk("s", 0, 0.0, audio=np.zeros(100))
    validate_for_model(ok, audio, chunk_size=100)
    validate_for_model(chunk("s", 1, 0.0, audio=np.zeros(40), end=True), audio, chunk_size=100)
    with pytest.raises(PayloadError, match="holds 99 samples; expected exactly 100"):
        validate_for_model(chunk("s", 0, 0.0, audio=np.zeros(99)), audio, chunk_size=100)
    with pytest.raises(PayloadError, match="at most 100"):
        validate_for_model(chunk("s", 0, 0.0, audio=np.zeros(101), end=True), audio, chunk_size=100)
    with pytest.raises(ModelMismatchError, match="unknown model version"):
        validate_for_model(chunk("s", 0, 0.0, audio=np.zeros(100), model="h2"), audio)
    with pytest.raises(PayloadError, match="audio payload for a sensor model"):
        validate_for_model(ok, sensor)
    rows = chunk("s", 0, 0.0, timestamps=[0.0, 1.0], values=[[1.0], [2.0]])
    with pytest.raises(PayloadError, match="1 channel\\(s\\); the model expects 2"):
        validate_for_model(rows, sensor)
    with pytest.raises(PayloadError, match="sensor payload for an audio model"):
        validate_for_model(rows, audio)
    empty = parse_message('{"stream": "s", "seq": 3, "event_time": 0, "end": true, "sensor": {"timestamps": [], "values": []}}')
    validate_for_model(empty, sensor, chunk_size=10)  # an empty last chunk has no channels to check


def test_validate_sample_rate_for_model() -> None:
    audio = SimpleNamespace(weights_hash="h1", feature_config=FeatureConfig.audio_default(sample_rate=8000, n_mels=8))
    sensor = SimpleNamespace(weights_hash="h1", feature_config=FeatureConfig.sensor_default(["a", "b"]))
    validate_for_model(resume("s", 3, 0.0, b"x", sample_rate=16000), audio)  # the snapshot decides if it matches
    with pytest.raises(MessageError, match="must carry 'sample_rate'.*this model runs at 8000 Hz"):
        validate_for_model(resume("s", 3, 0.0, b"x"), audio)
    validate_for_model(resume("s", 3, 0.0, b"x"), sensor)
    validate_for_model(chunk("s", 0, 0.0, audio=np.zeros(10)), audio)  # the opener is checked by the stateful DoFn
    with pytest.raises(PayloadError, match="'sample_rate' was given for a sensor model"):
        validate_for_model(parse_message('{"stream": "s", "seq": 0, "event_time": 0, "end": true, "sample_rate": 10}'),
                           sensor)
