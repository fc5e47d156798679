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
    if days_before + days_after > 6:
        raise ValueError("days_before + days_after must be at most 6 (seven days in all)")
    night_start, night_end = night_hours(params)
    cdr = data.cdr
    baseline = night_events(cdr, shock_day - baseline_days, shock_day - 1, night_start, night_end)
    home = modal_region(baseline, ["msisdn"])
    residents = home[home["region"] == origin_region]["msisdn"]
    later = night_events(cdr, shock_day - days_before, shock_day + days_after, night_start, night_end)
    later = later[later["msisdn"].isin(residents)]
    where = modal_region(later, ["msisdn", "day"])
    where = where.assign(days_since_shock=where["day"] - shock_day)
    where = where.rename(columns={"region": "destination"})
    if "collapse_moved" in params and params["collapse_moved"]:
        moved = where["destination"] != origin_region
        where = where.assign(destination=moved.map({True: "elsewhere", False: origin_region}))
    return where[["msisdn", "destination", "days_since_shock"]].reset_index(drop=True)
