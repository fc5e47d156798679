"""Distinct subscribers seen per region per day.

Returns one row per (subscriber, region, day) in which the subscriber had at
least one event; the platform counts the distinct subscribers per cell.
"""


def check_params(params):
    """Data-free: refuses a reversed window before the run (nothing spent)."""
    if params["end_day"] < params["start_day"]:
        raise ValueError("end_day must be greater than or equal to start_day")


def contributions(data, params):
    start_day = params["start_day"]
    end_day = params["end_day"]
    cdr = data.cdr
    seen = cdr[cdr["day"].between(start_day, end_day)]
    return seen[["msisdn", "region", "day"]].drop_duplicates().reset_index(drop=True)
