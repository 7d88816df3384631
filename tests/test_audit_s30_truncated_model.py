"""A damaged copy of the right model file given to ``posecal export``.

Found (session 30): a truncated ``.onnx`` / ``.tflite`` has another SHA-256 than the one the head records, so
export said "the head was fitted on another model" — a user would go looking for the wrong file. The hash check
now parses the file first and names what is wrong with it; a readable model of another hash still gets the
"another model" line.
"""

from __future__ import annotations

import pytest

from posecal.ccnet.export import _same_model
from posecal.errors import PosecalInputError

pytest.importorskip("onnx")

SP = ("models", "simplepose", "ultralight-nano-simplepose.onnx")
RT = ("models", "efficientpose", "EfficientPoseRT.tflite")


@pytest.mark.parametrize("parts, what", [(SP, "not an ONNX model"), (RT, "not a readable TFLite model")])
def test_truncated_model_is_named_as_damaged(shared, tmp_path, parts, what):
    src = shared(*parts)
    cut = tmp_path / ("cut" + src.suffix)
    cut.write_bytes(src.read_bytes()[:300_000])
    with pytest.raises(PosecalInputError) as e:
        _same_model({"model_sha256": "0" * 64, "model_tensor": "t"}, tmp_path, cut)
    assert what in str(e.value) and e.value.field == "--model" and "another model" not in str(e.value)


def test_readable_model_of_another_hash_is_another_model(shared, tmp_path):
    with pytest.raises(PosecalInputError) as e:
        _same_model({"model_sha256": "0" * 64, "model_tensor": "t"}, tmp_path, shared(*SP))
    assert "another model" in str(e.value) and e.value.field == "model_sha256"
