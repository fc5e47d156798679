"""Origin-destination matrix of home changes between two windows.

Each subscriber's home region (modal night-time region) is found in the
"before" window and in the "after" window. Returns one row per subscriber
whose home changed: (msisdn, origin, destination); with include_stayers,
also subscribers whose home did not change (origin == destination).
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
    before_start = params["before_start_day"]
    before_end = params["before_end_day"]
    after_start = params["after_start_day"]
    after_end = params["after_end_day"]
    if before_end < before_start or after_end < after_start:
        raise ValueError("each window must end on or after the day it starts")
    include_stayers = False
    if "include_stayers" in params:
        include_stayers = params["include_stayers"]
    night_start, night_end = night_hours(params)
    cdr = data.cdr
    before = night_events(cdr, before_start, before_end, night_start, night_end)
    after = night_events(cdr, after_start, after_end, night_start, night_end)
    origin = modal_region(before, ["msisdn"]).rename(columns={"region": "origin"})
    destination = modal_region(after, ["msisdn"]).rename(columns={"region": "destination"})
    moves = origin.merge(destination, on="msisdn", how="inner")
    if not include_stayers:
        moves = moves[moves["origin"] != moves["destination"]]
    return moves[["msisdn", "origin", "destination"]].reset_index(drop=True)
