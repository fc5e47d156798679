"""The vetted surface an algorithm may touch, as plain names.

This module imports nothing heavy: ``check_source`` uses it to reject imports
statically without loading numpy or pandas. ``_guards`` maps these names onto
real types inside the sandbox child.

Every name here was read against the library source for three hazards: it
resolves a *string* to an attribute (``eval``, ``query``, ``agg('name')``),
it reaches the file system, network or clock, or it hands out an object that
reaches the interpreter (modules, frames, raw memory). Names with any of
those are absent or always denied.
"""

from __future__ import annotations


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Denied on every object, whatever its type, before any allowlist is consulted.
ALWAYS_DENIED: frozenset[str] = _names(
    """
    eval query pipe style plot plotting sparse attrs flags
    tofile dump dumps setflags ctypes view base data getfield setfield
    format format_map vformat
    now today utcnow fromtimestamp utcfromtimestamp
    read_csv read_parquet read_pickle read_json read_excel read_sql read_table
    read_hdf read_feather read_orc read_html read_xml read_clipboard read_fwf
    read_stata read_sas read_spss read_sql_query read_sql_table
    load save savez savez_compressed loadtxt savetxt genfromtxt fromfile memmap
    to_csv to_json to_parquet to_pickle to_sql to_hdf to_feather to_excel
    to_html to_latex to_markdown to_stata to_orc to_xml to_clipboard to_gbq
    to_string to_records tobytes tostring
    gi_frame gi_code gi_yieldfrom cr_frame ag_frame f_back f_globals f_locals
    f_builtins f_code tb_frame tb_next func_globals mro
    """
)

# Reducer / transform names that pandas may resolve with getattr when given as
# a string (agg('sum'), transform('cumsum'), pivot_table(aggfunc='mean')).
REDUCER_NAMES: frozenset[str] = _names(
    """
    sum mean median min max count size nunique std var sem prod product
    first last any all idxmax idxmin cumsum cumcount cummax cummin cumprod
    rank shift diff pct_change quantile skew kurt mode ngroup nth head tail
    unique ohlc bfill ffill abs round value_counts describe fillna
    """
)

# Methods whose arguments name a function to call: the arguments are vetted.
CALLABLE_TAKING: frozenset[str] = _names(
    "agg aggregate apply transform map applymap filter pivot_table combine"
)

# Methods that change the object in place; denied on the resident dataset.
IN_PLACE_METHODS: frozenset[str] = _names("insert pop update")

# ---------------------------------------------------------------- pandas types

_FRAME_AND_SERIES_COMMON = """
    abs add agg aggregate all any apply astype at axes bfill clip columns
    combine combine_first copy count cummax cummin cumprod cumsum describe diff
    div divide dot drop drop_duplicates droplevel dropna dtypes duplicated empty
    eq equals explode ffill fillna filter first_valid_index floordiv ge groupby
    gt head iat idxmax idxmin iloc index infer_objects interpolate isin isna
    isnull items keys kurt kurtosis last_valid_index le loc lt map mask max mean
    median min mod mode mul multiply ndim ne nlargest notna notnull nsmallest
    nunique pct_change pow prod product quantile radd rank rdiv reindex rename
    rename_axis reorder_levels replace reset_index rfloordiv rmod rmul round
    rolling expanding ewm resample rpow rsub rtruediv sample sem set_axis
    set_index shape shift size skew sort_index sort_values squeeze std sub
    subtract sum swaplevel T tail take to_dict to_numpy transform transpose
    truediv truncate unstack values var where xs cov corr convert_dtypes
    between_time at_time tz_convert tz_localize asfreq
"""

DATAFRAME_ATTRS: frozenset[str] = _names(
    _FRAME_AND_SERIES_COMMON
    + """
    assign corrwith insert iterrows itertuples join melt memory_usage merge
    nlargest pivot pivot_table pop select_dtypes stack value_counts to_numpy
    count update
    """
)

SERIES_ATTRS: frozenset[str] = _names(
    _FRAME_AND_SERIES_COMMON
    + """
    argmax argmin argsort array between cat dt dtype factorize hasnans
    is_monotonic_decreasing is_monotonic_increasing is_unique item name
    nbytes repeat searchsorted str to_frame to_list tolist unique value_counts
    autocorr
    """
)

INDEX_ATTRS: frozenset[str] = _names(
    """
    all any append argmax argmin argsort astype copy date day dayofweek
    day_of_week dayofyear day_of_year difference drop drop_duplicates droplevel
    dropna dtype duplicated empty equals fillna get_level_values get_loc hour
    intersection is_monotonic_decreasing is_monotonic_increasing is_unique isin
    isna levels map max min minute month name names nlevels notna nunique
    quarter rename second shape size sort_values str symmetric_difference
    to_frame to_list to_numpy to_series tolist union unique value_counts values
    weekday year codes floor ceil normalize strftime tz
    """
)

GROUPBY_ATTRS: frozenset[str] = _names(
    """
    agg aggregate all any apply bfill count cumcount cummax cummin cumprod
    cumsum describe diff ffill filter first get_group groups head idxmax idxmin
    indices last max mean median min ngroup ngroups nth nunique ohlc
    pct_change prod quantile rank sem shift size skew std sum tail transform
    unique value_counts var rolling expanding resample
    """
)

WINDOW_ATTRS: frozenset[str] = _names(
    """
    agg aggregate apply count cov corr kurt max mean median min quantile rank
    sem skew std sum var first last nunique size ohlc
    """
)

STRING_METHODS_ATTRS: frozenset[str] = _names(
    """
    capitalize casefold cat center contains count endswith extract extractall
    find findall fullmatch get get_dummies index isalnum isalpha isdecimal
    isdigit islower isnumeric isspace istitle isupper join len ljust lower
    lstrip match normalize pad partition removeprefix removesuffix repeat
    replace rfind rindex rjust rpartition rsplit rstrip slice slice_replace
    split startswith strip swapcase title translate upper wrap zfill
    """
)

_DATETIME_FIELDS = """
    year month day hour minute second microsecond nanosecond date time
    dayofweek day_of_week weekday dayofyear day_of_year quarter
    is_month_start is_month_end is_quarter_start is_quarter_end is_year_start
    is_year_end is_leap_year days_in_month daysinmonth normalize floor ceil
    round strftime tz tz_localize tz_convert month_name day_name isocalendar
    unit as_unit
"""

DATETIME_PROPERTIES_ATTRS: frozenset[str] = _names(
    _DATETIME_FIELDS
    + " days seconds microseconds nanoseconds total_seconds components to_pytimedelta"
)

CATEGORICAL_ACCESSOR_ATTRS: frozenset[str] = _names(
    """
    categories codes ordered as_ordered as_unordered add_categories
    remove_categories remove_unused_categories rename_categories
    reorder_categories set_categories
    """
)

TIMESTAMP_ATTRS: frozenset[str] = _names(
    _DATETIME_FIELDS
    + """
    isoformat timestamp to_pydatetime to_datetime64 value week weekofyear
    replace tzinfo toordinal
    """
)

TIMEDELTA_ATTRS: frozenset[str] = _names(
    """
    days seconds microseconds nanoseconds total_seconds components value
    floor ceil round unit as_unit to_pytimedelta isoformat
    """
)

DTYPE_ATTRS: frozenset[str] = _names("kind name itemsize categories ordered")

# ----------------------------------------------------------------- numpy types

NDARRAY_ATTRS: frozenset[str] = _names(
    """
    T all any argmax argmin argsort astype clip copy cumprod cumsum dot dtype
    flatten item max mean min nbytes ndim nonzero prod ravel repeat reshape
    round searchsorted shape size sort squeeze std sum take tolist transpose
    var real imag
    """
)

NUMPY_SCALAR_ATTRS: frozenset[str] = _names(
    "item dtype astype round real imag tolist is_integer"
)

# --------------------------------------------------------------- Python types

STR_ATTRS: frozenset[str] = _names(
    """
    capitalize casefold center count encode endswith expandtabs find index
    isalnum isalpha isascii isdecimal isdigit isidentifier islower isnumeric
    isprintable isspace istitle isupper join ljust lower lstrip partition
    removeprefix removesuffix replace rfind rindex rjust rpartition rsplit
    rstrip split splitlines startswith strip swapcase title translate upper
    zfill
    """
)
BYTES_ATTRS: frozenset[str] = _names("decode hex")
DICT_ATTRS: frozenset[str] = _names(
    "clear copy get items keys pop popitem setdefault update values"
)
LIST_ATTRS: frozenset[str] = _names(
    "append clear copy count extend index insert pop remove reverse sort"
)
TUPLE_ATTRS: frozenset[str] = _names("count index")
SET_ATTRS: frozenset[str] = _names(
    """
    add clear copy difference difference_update discard intersection
    intersection_update isdisjoint issubset issuperset pop remove
    symmetric_difference symmetric_difference_update union update
    """
)
INT_ATTRS: frozenset[str] = _names(
    "bit_length bit_count conjugate denominator numerator real imag is_integer"
)
FLOAT_ATTRS: frozenset[str] = _names("conjugate is_integer real imag")
DATE_ATTRS: frozenset[str] = _names(
    """
    year month day hour minute second microsecond weekday isoweekday
    isocalendar isoformat strftime date time replace toordinal
    """
)
TIMEDELTA_PY_ATTRS: frozenset[str] = _names("days seconds microseconds total_seconds")
EXCEPTION_ATTRS: frozenset[str] = _names("args")

# --------------------------------------------------------------------- facades

NUMPY_FACADE: frozenset[str] = _names(
    """
    abs absolute add all allclose any append arange arccos arcsin arctan
    arctan2 argmax argmin argsort around array array_equal array_split asarray
    average bincount bool_ ceil clip column_stack concatenate corrcoef cos
    cosh count_nonzero cov cumprod cumsum datetime64 deg2rad diff digitize
    divide dot e einsum exp expm1 float16 float32 float64 floor floor_divide
    fmax fmin full full_like histogram hstack hypot inf int8 int16 int32 int64
    interp intersect1d isclose isfinite isin isinf isnan lexsort linspace log
    log10 log1p log2 logical_and logical_not logical_or logical_xor max
    maximum mean median min minimum mod multiply nan nanargmax nanargmin
    nancumsum nanmax nanmean nanmedian nanmin nanpercentile nanprod
    nanquantile nanstd nansum nanvar ndarray negative nonzero ones ones_like
    outer percentile pi power prod ptp quantile rad2deg ravel repeat reshape
    rint round searchsorted setdiff1d sign sin sinh sort sqrt square stack std
    str_ subtract sum take tan tanh tile timedelta64 transpose true_divide
    trunc uint8 uint16 uint32 uint64 union1d unique var vstack where zeros
    zeros_like
    """
)

PANDAS_FACADE: frozenset[str] = _names(
    """
    DataFrame Series Index MultiIndex Categorical CategoricalDtype Timestamp
    Timedelta NA NaT NamedAgg Grouper Interval IntervalIndex DatetimeIndex
    concat merge merge_asof merge_ordered cut qcut crosstab pivot pivot_table
    melt wide_to_long get_dummies from_dummies to_datetime to_timedelta
    to_numeric date_range timedelta_range period_range interval_range isna
    notna isnull notnull unique factorize
    """
)

MATH_FACADE: frozenset[str] = _names(
    """
    acos acosh asin asinh atan atan2 atanh cbrt ceil comb copysign cos cosh
    degrees dist e erf erfc exp exp2 expm1 fabs factorial floor fmod frexp
    fsum gamma gcd hypot inf isclose isfinite isinf isnan isqrt lcm ldexp
    lgamma log log10 log1p log2 modf nan nextafter perm pi pow prod radians
    remainder sin sinh sqrt tan tanh tau trunc ulp
    """
)

STATISTICS_FACADE: frozenset[str] = _names(
    """
    fmean geometric_mean harmonic_mean mean median median_grouped median_high
    median_low mode multimode pstdev pvariance quantiles stdev variance
    correlation covariance StatisticsError
    """
)

OPAL_FACADE: frozenset[str] = _names(
    "require_columns between_days night_hours night_events modal_region distinct sum_by NIGHT_START_HOUR NIGHT_END_HOUR"
)

FACADES: dict[str, frozenset[str]] = {
    "numpy": NUMPY_FACADE,
    "pandas": PANDAS_FACADE,
    "math": MATH_FACADE,
    "statistics": STATISTICS_FACADE,
    "opal": OPAL_FACADE,
}

# Builtins the algorithm may name. Everything else (id, hash, getattr, type,
# vars, dir, globals, open, exec, eval, compile, __import__ ...) is absent.
SAFE_BUILTINS: frozenset[str] = _names(
    """
    abs all any bool callable chr dict divmod enumerate filter float frozenset
    int isinstance len list map max min next object ord pow range repr reversed round
    set slice sorted str sum tuple zip
    True False None
    ArithmeticError AssertionError Exception IndexError KeyError LookupError MemoryError
    NotImplementedError OverflowError RuntimeError StopIteration TypeError
    ValueError ZeroDivisionError
    """
)
