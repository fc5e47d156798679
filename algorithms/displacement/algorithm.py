"""Displacement after a shock: where the residents of one region are, day by day.

Residents are the subscribers whose home region (modal night-time region)
over the baseline window, the baseline_days days before shock_day, is
origin_region. For each day from shock_day to shock_day + days_after, each
resident's location is their modal night-time region that day (residents
without a night-time event that day are not counted that day). Returns one
row per (resident, day): (msisdn, destination, days_since_shock); the
destination equals origin_region for those who stayed.
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
    if "baseline_days" in params:
        baseline_days = params["baseline_days"]
    if "days_after" in params:
        days_after = params["days_after"]
    night_start, night_end = night_hours(params)
    cdr = data.cdr
    baseline = night_events(cdr, shock_day - baseline_days, shock_day - 1, night_start, night_end)
    home = modal_region(baseline, ["msisdn"])
    residents = home[home["region"] == origin_region]["msisdn"]
    later = night_events(cdr, shock_day, shock_day + days_after, night_start, night_end)
    later = later[later["msisdn"].isin(residents)]
    where = modal_region(later, ["msisdn", "day"])
    where = where.assign(days_since_shock=where["day"] - shock_day)
    where = where.rename(columns={"region": "destination"})
    return where[["msisdn", "destination", "days_since_shock"]].reset_index(drop=True)
