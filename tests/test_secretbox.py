import base64
import os
import stat

import pytest

from app import create_app
from app.secretbox import KEY_BYTES, SecretBox, SecretKeyError, SecretOpenError, load_or_create_key

WHERE = {"table": "host_credentials", "column": "password", "row_id": 7}


@pytest.fixture
def box():
    return SecretBox(os.urandom(KEY_BYTES))


def test_round_trip(box):
    sealed = box.seal("s3cret repo pässword", **WHERE)
    assert b"s3cret" not in sealed
    assert box.open(sealed, **WHERE) == "s3cret repo pässword"


def test_same_plaintext_seals_differently(box):
    assert box.seal("x", **WHERE) != box.seal("x", **WHERE)


@pytest.mark.parametrize(
    "elsewhere",
    [
        {"table": "host_credentials", "column": "password", "row_id": 8},
        {"table": "host_credentials", "column": "hook", "row_id": 7},
        {"table": "channels", "column": "password", "row_id": 7},
    ],
)
def test_value_moved_to_another_row_column_or_table_fails(box, elsewhere):
    sealed = box.seal("secret", **WHERE)
    with pytest.raises(SecretOpenError) as error:
        box.open(sealed, **elsewhere)
    assert "secret" not in str(error.value).replace("sealed", "")


def test_tampering_is_detected(box):
    sealed = bytearray(box.seal("secret", **WHERE))
    sealed[-1] ^= 0x01
    with pytest.raises(SecretOpenError):
        box.open(bytes(sealed), **WHERE)
    with pytest.raises(SecretOpenError):
        box.open(b"\x01short", **WHERE)


def test_other_key_cannot_open(box):
    sealed = box.seal("secret", **WHERE)
    with pytest.raises(SecretOpenError):
        SecretBox(os.urandom(KEY_BYTES)).open(sealed, **WHERE)


def test_sealing_needs_a_row_id(box):
    with pytest.raises(ValueError, match="flush the row"):
        box.seal("x", table="t", column="c", row_id=None)


def test_key_file_is_created_0600_and_reused(tmp_path):
    path = tmp_path / "keys" / "secret.key"
    key = load_or_create_key(path)
    assert len(key) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key


def test_wrong_size_key_file_is_a_clear_startup_error(tmp_path):
    path = tmp_path / "secret.key"
    path.write_bytes(base64.b64encode(os.urandom(16)))
    with pytest.raises(SecretKeyError, match="must hold 32 random bytes"):
        create_app({"RM_DATA_DIR": tmp_path, "RM_SECRET_KEY_FILE": path})
    path.write_text("not base64 at all!!")
    with pytest.raises(SecretKeyError, match="must hold 32 random bytes"):
        load_or_create_key(path)


def test_unreadable_key_file_is_a_clear_startup_error(tmp_path):
    path = tmp_path / "secret.key"
    path.mkdir()  # a directory cannot be read as a file, even by root
    with pytest.raises(SecretKeyError, match="cannot read secret key file"):
        load_or_create_key(path)


def test_repr_shows_no_key():
    key = os.urandom(KEY_BYTES)
    assert key.hex() not in repr(SecretBox(key))
