"""Wire format units: chunk frames round-trip, control messages parse or explain what is wrong."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from rnnstream.serving import protocol as P


def test_audio_frames_round_trip_float32_and_int16():
    x = np.linspace(-1, 1, 321, dtype=np.float32)
    ch, seq, payload = P.split_frame(P.encode_chunk(7, 42, P.audio_payload(x, "float32")))
    assert (ch, seq) == (7, 42)
    np.testing.assert_array_equal(P.decode_audio_payload(payload, "float32", where="t"), x)
    _, _, payload = P.split_frame(P.encode_chunk(0, 0, P.audio_payload(x, "int16")))
    back = P.decode_audio_payload(payload, "int16", where="t")
    assert back.dtype == np.float32 and np.abs(back - x).max() < 2 / 32768


def test_int16_frames_use_the_one_codec_scale():
    """int16 = round(x * 32768) clipped, decoded as int16 / 32768: the codec's scale, as in the stream job."""
    from rnnstream.pipeline.codec import decode_samples, encode_samples

    x = np.array([-1.0, -0.5, 0.0, 0.25, 0.999, 1.0], np.float32)
    pcm = P.audio_payload(x, "int16")
    np.testing.assert_array_equal(pcm, np.clip(np.round(x * 32768), -32768, 32767))
    assert pcm.tobytes() == encode_samples(x, "int16")
    back = P.decode_audio_payload(pcm.tobytes(), "int16", where="t")
    np.testing.assert_array_equal(back, decode_samples(encode_samples(x, "int16"), "int16"))
    np.testing.assert_array_equal(back[:4], x[:4])  # exact where x * 32768 is an integer
    np.testing.assert_array_equal(P.audio_payload(pcm, "int16"), pcm)  # int16 PCM goes out unchanged


def test_sensor_rows_round_trip_and_length_check():
    ts = np.array([1.5, 2.25, 1e9 + 0.125])
    vals = np.arange(6, dtype=np.float32).reshape(3, 2)
    _, _, payload = P.split_frame(P.encode_chunk(1, 2, P.sensor_payload(ts, vals)))
    t2, v2 = P.decode_sensor_payload(payload, 2, where="t")
    np.testing.assert_array_equal(t2, ts)
    np.testing.assert_array_equal(v2, vals)
    with pytest.raises(P.ProtocolError, match="24 bytes per row") as info:
        P.decode_sensor_payload(payload[:-8], 2, where="t")
    assert info.value.close_code == P.CLOSE_BAD_DATA


def test_parse_control_messages():
    blob = b"\x00snapshot"
    start = P.parse_control('{"type": "start", "channel": 3, "stream": "a:b-1", "dtype": "int16", "snapshot": "%s", '
                            '"seq": 9, "sample_rate": 8000}' % base64.b64encode(blob).decode())
    assert start == P.Start(3, "a:b-1", "int16", False, None, blob, 9, 8000)
    assert P.parse_control('{"type": "start"}').sample_rate is None  # the server decides whether it is needed
    assert P.parse_control('{"type": "end"}') == P.End(0, False, False)
    assert isinstance(P.parse_control('{"type": "ping"}'), P.Ping)


@pytest.mark.parametrize("text, fragment", [
    ('{"type": "start", "snapshot": "%%%"}', "not valid base64"),
    ('{"type": "start", "resume": "a", "snapshot": "AA=="}', "not both"),
    ('{"type": "start", "seq": -1}', "'seq'"),
    ('{"type": "start", "channel": 4294967296}', "'channel'"),
    ('{"type": "start", "outputs": "yes"}', "'outputs' must be true or false"),
    ('{"type": "end", "flush": true}', "flush"),
    ('"start"', "JSON object"),
])
def test_parse_control_rejections_name_the_problem(text, fragment):
    with pytest.raises(P.ProtocolError) as info:
        P.parse_control(text)
    assert fragment in info.value.message and info.value.code == "bad_message" and info.value.close_code == 1008


@pytest.mark.parametrize("rate", ["0", "-8000", "8000.5", '"8000"', "true"])
def test_start_sample_rate_must_be_a_positive_integer(rate):
    with pytest.raises(P.ProtocolError) as info:
        P.parse_control('{"type": "start", "sample_rate": %s}' % rate)
    assert info.value.code == "bad_sample_rate" and "'sample_rate'" in info.value.message
    assert info.value.close_code == 1008


@pytest.mark.parametrize("bad", ["", "a\nb", "rtl\u202e", "a/b", "..", "x" * 257, 5])
def test_start_stream_ids_follow_the_stream_core_rule(bad):
    from rnnstream.pipeline.errors import StreamIdError
    from rnnstream.pipeline.stream_checks import check_stream_id

    with pytest.raises(StreamIdError) as core:
        check_stream_id(bad)
    with pytest.raises(P.ProtocolError) as info:
        P.parse_control(json.dumps({"type": "start", "stream": bad}))
    assert info.value.code == "bad_message" and info.value.close_code == 1008
    assert info.value.message == f"start: {core.value}"


@pytest.mark.parametrize("good", ["mic-7", "pump 3", "ñandú", "x" * 256, "a.b", "..."])
def test_start_accepts_every_stream_id_the_core_accepts(good):
    assert P.parse_control(json.dumps({"type": "start", "stream": good})).stream == good


@pytest.mark.parametrize("rate", [0, 384_001, 10**12, True, 8000.0])
def test_start_and_predict_sample_rates_follow_the_stream_core_bounds(rate):
    from rnnstream.pipeline.errors import ConfigError, MessageError
    from rnnstream.pipeline.stream_checks import check_sample_rate
    from rnnstream.serving.http_app import query_rate

    with pytest.raises(MessageError) as core:
        check_sample_rate(rate, "start")
    with pytest.raises(P.ProtocolError) as info:
        P.parse_control(json.dumps({"type": "start", "sample_rate": rate}))
    assert info.value.code == "bad_sample_rate" and info.value.message == str(core.value)
    if isinstance(rate, int) and not isinstance(rate, bool):
        with pytest.raises(ConfigError, match="sample_rate"):
            query_rate({"sample_rate": str(rate)})


def test_highest_sample_rate_is_the_cores():
    from rnnstream.pipeline.stream_checks import MAX_SAMPLE_RATE
    from rnnstream.serving.http_app import query_rate

    assert P.parse_control(json.dumps({"type": "start", "sample_rate": MAX_SAMPLE_RATE})).sample_rate == MAX_SAMPLE_RATE
    assert query_rate({"sample_rate": str(MAX_SAMPLE_RATE)}) == MAX_SAMPLE_RATE
