"""The unit dictionary a zygote builds once per load (the index each unit's
pseudonym is drawn at) is ``pd.factorize(sort=False)``'s, whichever encoder
made it: Arrow's where it can, pandas' where it cannot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opal.sandbox import pseudonyms


@pytest.mark.parametrize("column", [
    pd.Series(np.random.default_rng(5).integers(221_700_000_000, 221_799_999_999, 20_000)),
    pd.Series([3.0, np.nan, 1.0, 3.0, None, 2.0]),
    pd.Series(["a", None, "b", "a"], dtype="str"),
    pd.Series(["a", None, "b", "a"], dtype=object),
    pd.Series([1, "1", 2.5, (1, 2), 1], dtype=object),   # Arrow cannot type it: pandas encodes it
    pd.Series([], dtype=np.int64),
], ids=["ids", "floats with gaps", "text", "objects", "mixed objects", "empty"])
def test_the_unit_dictionary_is_pandas_factorize(column: pd.Series) -> None:
    pseudonyms.forget()
    codes, count = pseudonyms.dictionary("cdr", "msisdn", pd.DataFrame({"msisdn": column}))
    expected, uniques = pd.factorize(column, sort=False, use_na_sentinel=True)
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, expected)
    assert count == len(uniques)
    pseudonyms.forget()
