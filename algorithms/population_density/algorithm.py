"""Distinct subscribers seen per region per day.

Returns one row per (subscriber, region, day) in which the subscriber had at
least one event; the platform counts the distinct subscribers per cell.
"""

import opal  # the platform's vetted helper API (opal.helpers)


def check_params(params):
    """Data-free: refuses a reversed window before the run (nothing spent)."""
    if params["end_day"] < params["start_day"]:
        raise ValueError("end_day must be greater than or equal to start_day")


def contributions(data, params):
    seen = opal.between_days(data.cdr, params)
    # drop_duplicates, on packed integer keys (region is categorical)
    return opal.distinct(seen, ["msisdn", "region", "day"])
