"""Subscribers per home region.

A subscriber's home region is the region where most of their night-time
events happened over the window (ties go to the alphabetically first region).
Returns one row per subscriber with a night-time event: (msisdn, home_region).
"""


def night_events(cdr, start_day, end_day, night_start, night_end):
    window = cdr[cdr["day"].between(start_day, end_day)]
    hour = window["timestamp"].dt.hour
    if night_start > night_end:
        at_night = (hour >= night_start) | (hour < night_end)
    else:
        at_night = (hour >= night_start) & (hour < night_end)
    return window[at_night]


def modal_region(events, keys):
    counts = events.groupby(keys + ["region"]).size().reset_index(name="events")
    order = keys + ["events", "region"]
    ascending = [True] * len(keys) + [False, True]
    counts = counts.sort_values(order, ascending=ascending)
    return counts.drop_duplicates(keys)[keys + ["region"]]


def night_hours(params):
    night_start = 20
    night_end = 7
    if "night_start_hour" in params:
        night_start = params["night_start_hour"]
    if "night_end_hour" in params:
        night_end = params["night_end_hour"]
    if night_start == night_end:
        raise ValueError("night_start_hour and night_end_hour must differ")
    return night_start, night_end


def contributions(data, params):
    start_day = params["start_day"]
    end_day = params["end_day"]
    if end_day < start_day:
        raise ValueError("end_day must be greater than or equal to start_day")
    night_start, night_end = night_hours(params)
    events = night_events(data.cdr, start_day, end_day, night_start, night_end)
    home = modal_region(events, ["msisdn"])
    return home.rename(columns={"region": "home_region"}).reset_index(drop=True)
