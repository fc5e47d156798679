"""Displacement after a shock: where the residents of one region are, day by day.

Residents are the subscribers whose home region (modal night-time region)
over the baseline window, the baseline_days days before shock_day, is
origin_region. For each day from shock_day - days_before to
shock_day + days_after (at most 7 days in all), each
resident's location is their modal night-time region that day (residents
without a night-time event that day are not counted that day). Returns one
row per (resident, day): (msisdn, destination, days_since_shock); the
destination equals origin_region for those who stayed. Days before the shock
(negative days_since_shock) show the baseline. With collapse_moved, every
destination other than origin_region is reported as "elsewhere", so the share
moved comes out of two large cells per day instead of many small ones that the
release threshold would suppress.
"""

import opal  # the platform's vetted helper API (opal.helpers)


def check_params(params):
    """Data-free: at most seven days in all, refused before the run (nothing spent)."""
    days_before = 0
    days_after = 6
    if "days_before" in params:
        days_before = params["days_before"]
    if "days_after" in params:
        days_after = params["days_after"]
    if days_before + days_after > 6:
        raise ValueError("days_before + days_after must be at most 6 (seven days in all)")
    opal.night_hours(params)


def contributions(data, params):
    origin_region = params["origin_region"]
    shock_day = params["shock_day"]
    baseline_days = 7
    days_after = 6
    days_before = 0
    if "days_before" in params:
        days_before = params["days_before"]
    if "baseline_days" in params:
        baseline_days = params["baseline_days"]
    if "days_after" in params:
        days_after = params["days_after"]
    night_start, night_end = opal.night_hours(params)
    cdr = data.cdr
    baseline = opal.night_events(cdr, shock_day - baseline_days, shock_day - 1, night_start, night_end)
    home = opal.modal_region(baseline, ["msisdn"])
    residents = home[home["region"] == origin_region]["msisdn"]
    later = opal.night_events(cdr, shock_day - days_before, shock_day + days_after, night_start, night_end)
    later = later[later["msisdn"].isin(residents)]
    where = opal.modal_region(later, ["msisdn", "day"])
    where = where.assign(days_since_shock=where["day"] - shock_day)
    where = where.rename(columns={"region": "destination"})
    if "collapse_moved" in params and params["collapse_moved"]:
        moved = where["destination"] != origin_region
        where = where.assign(destination=moved.map({True: "elsewhere", False: origin_region}))
    return where[["msisdn", "destination", "days_since_shock"]].reset_index(drop=True)
