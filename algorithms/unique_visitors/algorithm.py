"""Unique visitors per region over a window, residents excluded.

A subscriber's home region is their modal night-time region over the window.
Returns one row per (subscriber, region) for every region, other than their
home region, in which the subscriber had an event during the window:
(msisdn, region). Subscribers without a night-time event in the window have
no known home and are left out.
"""

import opal  # the platform's vetted helper API (opal.helpers)


def check_params(params):
    """Data-free: refuses a reversed window before the run (nothing spent)."""
    if params["end_day"] < params["start_day"]:
        raise ValueError("end_day must be greater than or equal to start_day")
    opal.night_hours(params)


def contributions(data, params):
    start_day = params["start_day"]
    end_day = params["end_day"]
    night_start, night_end = opal.night_hours(params)
    cdr = data.cdr
    events = opal.night_events(cdr, start_day, end_day, night_start, night_end)
    home = opal.modal_region(events, ["msisdn"]).rename(columns={"region": "home_region"})
    window = cdr[cdr["day"].between(start_day, end_day)]
    seen = window[["msisdn", "region"]].drop_duplicates()
    seen = seen.merge(home, on="msisdn", how="inner")
    visitors = seen[seen["region"] != seen["home_region"]]
    return visitors[["msisdn", "region"]].reset_index(drop=True)
