"""``opal.distinct`` and ``opal.sum_by`` give exactly what pandas gives
(``drop_duplicates`` / ``groupby().sum()``, sorted by the keys), on the
packed fast path and on pandas' own path alike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opal import helpers


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    regions = ["Kelmar", "Amara", "Lunet", "Belcora"]
    return pd.DataFrame(
        {
            "unit": rng.integers(10**15, 10**15 + 300, n),  # pseudonym-sized ids
            "region": pd.Categorical(rng.choice(regions, n), categories=sorted(regions)),
            "region_text": pd.array(rng.choice(regions, n), dtype="str"),
            "day": rng.integers(-3, 14, n).astype(np.int32),
            "night": rng.random(n) < 0.3,
            "seconds": rng.integers(0, 1800, n),
            "small": rng.integers(0, 100, n).astype(np.int32),
            "ratio": rng.random(n),
        }
    )


KEYS = [
    ["unit", "region", "day"],  # packed: int, categorical, int
    ["region", "night"],
    ["unit"],
    ["unit", "region_text", "day"],  # text: pandas' path
    ["unit", "ratio"],  # floats: pandas' path
]


@pytest.mark.parametrize("keys", KEYS, ids="-".join)
def test_distinct_equals_sorted_drop_duplicates(keys: list[str]) -> None:
    frame = _frame(np.random.default_rng(1), 5000)
    expected = frame[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    got = helpers.distinct(frame, keys)
    pd.testing.assert_frame_equal(got, expected)


@pytest.mark.parametrize(("keys", "value"), [
    (keys, value) for keys in KEYS for value in ["seconds", "small", "night", "ratio"] if value not in keys
], ids=lambda v: "-".join(v) if isinstance(v, list) else v)
def test_sum_by_equals_groupby_sum(keys: list[str], value: str) -> None:
    frame = _frame(np.random.default_rng(2), 5000)
    expected = frame.groupby(keys)[value].sum().reset_index()
    got = helpers.sum_by(frame, keys, value)
    pd.testing.assert_frame_equal(got, expected)


@pytest.mark.parametrize("shape", ["sparse ids", "a key space too large for the bitmap"])
def test_sparse_ids_and_large_key_spaces_match_pandas(shape: str) -> None:
    rng = np.random.default_rng(3)
    n = 3000
    if shape == "sparse ids":  # phone numbers: packed through their sorted dictionary
        frame = pd.DataFrame({"unit": rng.integers(221_700_000_000, 221_799_999_999, n // 10).repeat(10),
                              "day": rng.integers(0, 5, n)})
    else:  # every combination distinct enough that even the packed space is too large: hashed
        frame = pd.DataFrame({"unit": rng.permutation(10**6)[:n], "day": rng.permutation(10**6)[:n]})
    frame = pd.concat([frame, frame.head(500)], ignore_index=True)  # duplicates to drop
    frame["seconds"] = rng.integers(0, 60, len(frame))
    key, _, space = helpers._packed(frame, ["unit", "day"])
    assert (helpers._present(key, space) is None) == (shape != "sparse ids")
    expected = frame[["unit", "day"]].drop_duplicates().sort_values(["unit", "day"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(helpers.distinct(frame, ["unit", "day"]), expected)
    pd.testing.assert_frame_equal(
        helpers.sum_by(frame, ["unit", "day"], "seconds"),
        frame.groupby(["unit", "day"])["seconds"].sum().reset_index(),
    )


def test_missing_keys_and_huge_values_go_to_pandas_and_match_it() -> None:
    frame = pd.DataFrame(
        {
            "unit": [1, 1, 2, 2, 3],
            "region": pd.Categorical(["a", None, "b", "b", None]),
            "big": np.array([2**62, 2**62, 1, 2, -(2**63)], dtype=np.int64),
        }
    )
    pd.testing.assert_frame_equal(
        helpers.distinct(frame, ["unit", "region"]),
        frame[["unit", "region"]].drop_duplicates().sort_values(["unit", "region"]).reset_index(drop=True),
    )
    pd.testing.assert_frame_equal(
        helpers.sum_by(frame, ["unit", "region"], "big"),
        frame.groupby(["unit", "region"])["big"].sum().reset_index(),
    )
    pd.testing.assert_frame_equal(
        helpers.sum_by(frame.assign(region="x"), ["unit"], "big"),
        frame.groupby(["unit"])["big"].sum().reset_index(),
    )


def test_empty_frames() -> None:
    frame = _frame(np.random.default_rng(4), 10).head(0)
    pd.testing.assert_frame_equal(
        helpers.distinct(frame, ["unit", "region"]),
        frame[["unit", "region"]].drop_duplicates().reset_index(drop=True),
    )
    pd.testing.assert_frame_equal(
        helpers.sum_by(frame, ["unit", "region"], "seconds"),
        frame.groupby(["unit", "region"])["seconds"].sum().reset_index(),
    )
