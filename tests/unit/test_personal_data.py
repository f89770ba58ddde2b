"""The personal-data policy's pure core: parsing, validation, and the same text whichever form
(one value, a row, wire bytes, an Arrow column) it is applied to."""

from __future__ import annotations

import hashlib
import hmac

import pyarrow as pa
import pytest

from cdc_reader.personal_data import NO_POLICY, PolicyError, keyed_hash, parse
from change_events import Column, TableSchema
from change_events.wire import UNCHANGED, decode_row, encode_row

KEY = b"k" * 32
STAFF = TableSchema(
    "public.staff",
    (
        Column("staff_id", "integer", 23, is_key=True),
        Column("first_name", "text", 25),
        Column("email_address", "text", 25),
        Column("department_id", "integer", 23),
        Column("note", "character varying(20)", 1043),
    ),
)
VALUES = ["ann.lee@terrifictotes.com", "0161 496000", "", "ab", "x@", "@y", "été@là.fr", "ü1234567", None]


def test_defaults_hash_the_totesys_personal_columns_and_keep_the_rest():
    policy = parse({}, KEY)
    rewrite = policy.rewrite(STAFF)
    row = ["7", "Ann", "ann.lee@terrifictotes.com", "2", "hi"]
    assert rewrite.values(row) == ["7", "Ann", hmac.new(KEY, row[2].encode(), hashlib.sha256).hexdigest(), "2", "hi"]
    assert parse({}, KEY).rewrite(TableSchema("public.design", STAFF.columns[:2])) is None


def test_keep_switches_a_default_off_and_drop_removes_the_column_everywhere():
    policy = parse({"staff.email_address": "keep", "staff.note": "drop"}, None)
    rewrite = policy.rewrite(STAFF)
    assert rewrite.schema.column_names == ("staff_id", "first_name", "email_address", "department_id")
    assert rewrite.values(["7", "Ann", "a@b", "2", "hi"]) == ["7", "Ann", "a@b", "2"]
    assert policy.apply("public.staff", {"staff_id": "7", "note": "hi"}) == {"staff_id": "7"}
    table = pa.table({n: pa.array(["1"]) for n in STAFF.column_names})
    assert rewrite.table(table).column_names == list(rewrite.schema.column_names)
    assert policy.visible(STAFF) == rewrite.schema


@pytest.mark.parametrize("rule", ["hash", "mask", "mask:email", "mask:last4", "mask:last1", "mask:last12"])
def test_every_form_gives_the_same_text(rule):
    policy = parse({"staff.email_address": rule}, KEY, defaults={})
    rewrite = policy.rewrite(STAFF)
    expected = [policy.apply("public.staff", {"email_address": v})["email_address"] for v in VALUES]
    # Arrow, chunked as a COPY batch may be
    table = pa.table(
        {
            "staff_id": pa.chunked_array([["1"] * 5, ["1"] * 4]),
            "email_address": pa.chunked_array([VALUES[:5], VALUES[5:]]),
        }
    )
    assert rewrite.table(table).column("email_address").to_pylist() == expected
    # wire bytes (pgoutput TupleData layout), with an unchanged TOASTed value beside
    for value, want in zip(VALUES, expected):
        row = ["1", "Ann", value, UNCHANGED, None]
        decoded, _ = decode_row(rewrite.row_bytes(encode_row(row), 0), 0)
        assert decoded == ["1", "Ann", want, UNCHANGED, None]
        kind = "n" if value is None else "t"
        data = None if value is None else value.encode()
        assert rewrite.tuple_data([("t", b"1"), ("t", b"A"), (kind, data), ("u", None), ("n", None)])[2] == (
            kind,
            None if want is None else want.encode(),
        )
    assert all(v is None or v != w or rule.startswith("mask") for v, w in zip(VALUES, expected))


def test_masks_keep_a_shape_not_the_value():
    apply = lambda rule, v: parse({"staff.email_address": rule}, None, defaults={}).apply(  # noqa: E731
        "public.staff", {"email_address": v}
    )["email_address"]
    assert apply("mask:email", "ann.lee@terrifictotes.com") == "***@terrifictotes.com"
    assert apply("mask", "ann.lee@terrifictotes.com") == "***@terrifictotes.com"
    assert apply("mask", "0161 496000") == "***6000"
    assert apply("mask:last2", "0161 496000") == "***00"
    assert apply("mask:last4", "1234") == "***"
    assert apply("mask:email", "no at sign") == "***"


def test_a_hash_joins_equal_values_and_depends_on_the_key():
    assert keyed_hash(KEY, "a@b") == keyed_hash(KEY, "a@b") != keyed_hash(b"other" * 8, "a@b")
    assert len(keyed_hash(KEY, "a@b")) == 64


@pytest.mark.parametrize(
    "mapping, key, words",
    [
        ({"staff.email_address": "scramble"}, KEY, "no policy"),
        ({"staff.email_address": "mask:last0"}, KEY, "no policy"),
        ({"email_address": "hash"}, KEY, "no column"),
        ({"staff.emial": "hash"}, KEY, "does not have"),
        ({"staff.staff_id": "hash"}, KEY, "part of the table's key"),
        ({"staff.department_id": "mask"}, KEY, "integer column"),
        ({"staff.email_address": "hash"}, None, "TOTES_PERSONAL_DATA_KEY"),
    ],
)
def test_a_wrong_policy_is_one_sentence(mapping, key, words):
    with pytest.raises(PolicyError) as caught:
        parse(mapping, key, defaults={}).rewrite(STAFF)
    message = str(caught.value)
    assert words in message and message.endswith(".") and "\n" not in message


def test_the_key_never_shows():
    policy = parse({}, KEY)
    assert KEY.decode() not in repr(policy) and "hash" in repr(policy)
    assert NO_POLICY.rewrite(STAFF) is None


# -- configuration --------------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    for name in ("TOTES_PERSONAL_DATA_KEY", "TOTES_PERSONAL_DATA_KEY_FILE", "TOTES_PERSONAL_DATA_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "totes.toml"
    monkeypatch.setenv("TOTES_CONFIG", str(path))
    return path


def test_the_policy_comes_from_the_config_file_over_the_defaults(config_file, monkeypatch):
    from totes_cli.personal_data_config import personal_data_policy

    config_file.write_text('[personal-data]\n"department.manager" = "mask"\nstaff.email_address = "keep"\n')
    monkeypatch.setenv("TOTES_PERSONAL_DATA_KEY", "a-key-of-enough-bytes")
    policy = personal_data_policy("s3://bucket/lake")
    assert {t: {c: r.action for c, r in cs.items()} for t, cs in policy.rules.items()} == {
        "public.address": {"phone": "hash"},
        "public.department": {"manager": "mask"},
    }
    assert policy.key == b"a-key-of-enough-bytes"


def test_a_local_lake_without_a_key_gets_its_own_and_keeps_it(config_file, tmp_path):
    from totes_cli.personal_data_config import personal_data_policy

    lake = tmp_path / "lake"
    first, second = personal_data_policy(str(lake)), personal_data_policy(str(lake))
    key_file = lake / "_local" / "personal-data.key"
    assert first.key == second.key and len(first.key) == 64
    assert key_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "text, env, words",
    [
        ('[personal-data]\n"staff.email_address" = "scramble"\n', {}, "which is no policy"),
        ("", {}, "no key is set (only a local lake makes its own)"),
        ("", {"TOTES_PERSONAL_DATA_KEY": "short"}, "shorter than 16 bytes"),
        ("", {"TOTES_PERSONAL_DATA_KEY_FILE": "/nowhere/key"}, "cannot be read"),
    ],
)
def test_a_wrong_policy_or_key_is_one_sentence_that_never_shows_the_key(config_file, monkeypatch, text, env, words):
    from totes_cli.personal_data_config import personal_data_policy
    from totes_cli.settings import ConfigError

    config_file.write_text(text)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        personal_data_policy("s3://bucket/lake")
    message = str(caught.value)
    assert words in message and "\n" not in message and "short" not in message.replace("shorter", "")
