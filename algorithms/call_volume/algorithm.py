"""Call volume per region per day.

Returns one row per (subscriber, region, day) with at least one call: the
subscriber's total call duration in seconds in that region that day, as
value. With aggregation "mean" the platform releases the mean over callers
of that value; with "sum", the total call seconds. The contributions are
the same for both.
"""

import opal  # the platform's vetted helper API (opal.helpers)


def check_params(params):
    """Data-free: refuses a reversed window before the run (nothing spent)."""
    if params["end_day"] < params["start_day"]:
        raise ValueError("end_day must be greater than or equal to start_day")


def contributions(data, params):
    start_day = params["start_day"]
    end_day = params["end_day"]
    cdr = data.cdr
    calls = cdr[cdr["day"].between(start_day, end_day) & (cdr["event"] == "call")]
    # groupby(...).sum(), on packed integer keys (region and event are categorical)
    per_unit = opal.sum_by(calls, ["msisdn", "region", "day"], "duration_s")
    return per_unit.rename(columns={"duration_s": "value"})
