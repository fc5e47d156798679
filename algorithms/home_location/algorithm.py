"""Subscribers per home region.

A subscriber's home region is the region where most of their night-time
events happened over the window (ties go to the alphabetically first region).
Returns one row per subscriber with a night-time event: (msisdn, home_region).
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
    events = opal.night_events(data.cdr, start_day, end_day, night_start, night_end)
    home = opal.modal_region(events, ["msisdn"])
    return home.rename(columns={"region": "home_region"}).reset_index(drop=True)
