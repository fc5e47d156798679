"""Origin-destination matrix of home changes between two windows.

Each subscriber's home region (modal night-time region) is found in the
"before" window and in the "after" window. Returns one row per subscriber
whose home changed: (msisdn, origin, destination); with include_stayers,
also subscribers whose home did not change (origin == destination).
"""

import opal  # the platform's vetted helper API (opal.helpers)


def check_params(params):
    """Data-free: refuses a reversed window before the run (nothing spent)."""
    if params["before_end_day"] < params["before_start_day"] or params["after_end_day"] < params["after_start_day"]:
        raise ValueError("each window must end on or after the day it starts")
    opal.night_hours(params)


def contributions(data, params):
    before_start = params["before_start_day"]
    before_end = params["before_end_day"]
    after_start = params["after_start_day"]
    after_end = params["after_end_day"]
    include_stayers = False
    if "include_stayers" in params:
        include_stayers = params["include_stayers"]
    night_start, night_end = opal.night_hours(params)
    cdr = data.cdr
    before = opal.night_events(cdr, before_start, before_end, night_start, night_end)
    after = opal.night_events(cdr, after_start, after_end, night_start, night_end)
    origin = opal.modal_region(before, ["msisdn"]).rename(columns={"region": "origin"})
    destination = opal.modal_region(after, ["msisdn"]).rename(columns={"region": "destination"})
    moves = origin.merge(destination, on="msisdn", how="inner")
    if not include_stayers:
        moves = moves[moves["origin"] != moves["destination"]]
    return moves[["msisdn", "origin", "destination"]].reset_index(drop=True)
