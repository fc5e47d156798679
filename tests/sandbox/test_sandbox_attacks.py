"""Adversarial suite: every payload runs through the real runtime.

For each payload: the run ends with the documented exit code (4 policy,
5 limit, 8 algorithm failed), the canary file was not created, nobody
connected to the loopback listener, and neither the host secret nor a data
value appears in the error message.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from sandbox_fixtures import HOST_SECRET, SECRET_MSISDN, SECRET_REGION, Listener

from opal.errors import OpalError
from opal.sandbox import Limits, Runtime

POLICY, LIMIT, FAILED = 4, 5, 8

SMALL = Limits(cpu_seconds=2, wall_seconds=5.0, memory_bytes=1 * 2**30)
TINY_OUTPUT = Limits(
    cpu_seconds=2, wall_seconds=5.0, memory_bytes=1 * 2**30,
    max_output_rows=1000, max_output_bytes=2**20,
)
WALL = Limits(cpu_seconds=30, wall_seconds=1.5, memory_bytes=1 * 2**30)

IMPORTS = "import numpy as np\nimport pandas as pd\nimport math\n"


def fn(body: str) -> str:
    """Wrap statements into the entrypoint, with the allowed imports."""
    return IMPORTS + "def contributions(data, params):\n" + textwrap.indent(
        textwrap.dedent(body).strip("\n"), "    "
    ) + "\n"


def mod(text: str) -> str:
    """A whole module (for module-level payloads)."""
    return textwrap.dedent(text).strip("\n") + "\n"


PAYLOADS: list[tuple[str, str, int, Limits | None]] = [
    # ---------------------------------------------------- dunder traversal
    ("class_bases_subclasses", fn("return ().__class__.__bases__[0].__subclasses__()"), POLICY, None),
    ("frame_class", fn("return data.cdr.__class__"), POLICY, None),
    ("function_globals", fn("f = lambda: 0\nreturn f.__globals__"), POLICY, None),
    ("function_func_globals", fn("f = lambda: 0\nreturn f.func_globals"), POLICY, None),
    ("mro_walk", fn("return [c for c in ().__class__.__mro__]"), POLICY, None),
    ("str_mro_method", fn("return str.mro()"), POLICY, None),
    ("getattr_computed_name", fn("return getattr(data.cdr, '__cl' + 'ass__')"), POLICY, None),
    ("vars_of_data", fn("return vars(data)"), POLICY, None),
    ("type_of_data", fn("return type(data)"), POLICY, None),
    ("array_interface", fn("return data.cdr.values.__array_interface__"), POLICY, None),
    ("computed_name_via_getitem", fn("return data.cdr['__cl' + 'ass__']"), FAILED, None),
    ("exception_subclasses", fn("return Exception.__subclasses__()"), POLICY, None),
    ("method_self_traversal", fn("return data.cdr.head.__self__"), POLICY, None),
    # ---------------------------------------------- format-string traversal
    ("str_format", fn("return '{0.__class__.__mro__}'.format(data)"), POLICY, None),
    ("str_format_map", fn("return '{x.__class__}'.format_map({'x': data})"), POLICY, None),
    ("str_class_format", fn("return str.format('{0.__class__}', data)"), POLICY, None),
    ("string_formatter", mod("""
        import string
        def contributions(data, params):
            return string.Formatter().format('{0.__class__}', data)
    """), POLICY, None),
    ("fstring_dunder", fn("return f'{data.__class__}'"), POLICY, None),
    ("fstring_nested_spec", fn("x = f\"{1:{'{0.__class__}'}}\"\nreturn x"), FAILED, None),
    # -------------------------------------- generators, frames, tracebacks
    ("generator_frame", fn("g = (x for x in [1])\nreturn g.gi_frame"), POLICY, None),
    ("generator_frame_back", fn("g = (x for x in [1])\nreturn g.gi_frame.f_back.f_globals"), POLICY, None),
    ("generator_code", mod("""
        def gen():
            yield 1
        def contributions(data, params):
            return gen().gi_code
    """), POLICY, None),
    ("traceback_frame", fn("""
        try:
            1 / 0
        except Exception as e:
            return e.__traceback__.tb_frame
    """), POLICY, None),
    ("exception_with_traceback", fn("""
        try:
            1 / 0
        except Exception as e:
            return e.with_traceback(None)
    """), POLICY, None),
    ("try_except_star", fn("""
        try:
            pass
        except* ValueError as eg:
            return eg
    """), POLICY, None),
    # ------------------------------- positional-only / guard-name shadowing
    ("posonly_getattr_shadow", mod("""
        def f(_getattr_, /):
            return _getattr_
        def contributions(data, params):
            return f(1)
    """), POLICY, None),
    ("posonly_write_shadow", mod("""
        def g(x, _write_=None, /):
            return x
        def contributions(data, params):
            return g(1)
    """), POLICY, None),
    ("lambda_guard_param", fn("h = lambda _getiter_: 1\nreturn h(2)"), POLICY, None),
    ("rebind_guard_module_level", mod("""
        _getattr_ = lambda o, n: o
        def contributions(data, params):
            return data
    """), POLICY, None),
    # ----------------------------------------------------- import smuggling
    ("import_os", mod("import os\ndef contributions(data, params):\n    return os\n"), POLICY, None),
    ("dunder_import", fn("return __import__('os')"), POLICY, None),
    ("import_submodule", mod("import numpy.f2py\ndef contributions(data, params):\n    pass\n"), POLICY, None),
    ("from_numpy_f2py", mod("from numpy import f2py\ndef contributions(data, params):\n    pass\n"), POLICY, None),
    ("from_numpy_ctypeslib", mod("from numpy import ctypeslib\ndef contributions(data, params):\n    pass\n"), POLICY, None),
    ("import_builtins", mod("import builtins\ndef contributions(data, params):\n    pass\n"), POLICY, None),
    ("from_pandas_io", mod("from pandas import io\ndef contributions(data, params):\n    pass\n"), POLICY, None),
    ("relative_import", mod("from . import x\ndef contributions(data, params):\n    pass\n"), POLICY, None),
    ("np_f2py_attribute", fn("return np.f2py.os"), POLICY, None),
    ("pd_core_common_builtins", fn("return pd.core.common.builtins"), POLICY, None),
    ("np_lib_as_strided", fn("return np.lib.stride_tricks.as_strided(data.cdr.values, (10**6,), (8,))"), POLICY, None),
    ("np_ctypeslib_attribute", fn("return np.ctypeslib"), POLICY, None),
    # ------------------------------------- numpy / pandas object traversal
    ("df_eval", fn("return data.cdr.eval(\"@pd.io.common.os.system('touch CANARY')\")"), POLICY, None),
    ("df_query", fn("return data.cdr.query('duration_s > 0')"), POLICY, None),
    ("agg_eval_name", fn("return data.cdr.agg('eval', expr='duration_s + 1')"), POLICY, None),
    ("apply_to_csv_name", fn("return data.cdr.apply('to_csv', path_or_buf='CANARY')"), POLICY, None),
    ("transform_query_name", fn("return data.cdr.transform('query', expr='day > 0')"), POLICY, None),
    ("groupby_agg_pipe", fn("return data.cdr.groupby('region').agg('pipe', print)"), POLICY, None),
    ("named_agg_writer", fn("return data.cdr.groupby('region').agg(x=('duration_s', 'to_pickle'))"), POLICY, None),
    # ------------- attribute names pandas resolves from keyword arguments
    ("agg_numeric_only_dunder", fn("return data.cdr.agg(numeric_only=('duration_s', '__reduce__'))"), POLICY, None),
    ("agg_engine_kwargs_to_csv", fn("return data.cdr.agg(engine_kwargs=('region', 'to_csv'))"), POLICY, None),
    ("agg_axis_named_dict", fn("return data.cdr.agg(axis=('duration_s', '__dict__'))"), POLICY, None),
    ("agg_named_mgr", fn("return data.cdr.agg(x=('duration_s', '_mgr'))"), POLICY, None),
    ("agg_dict_list_dunder", fn("return data.cdr.agg({'duration_s': ['sum', '__reduce_ex__']})"), POLICY, None),
    ("agg_namedagg_denied", fn("return data.cdr.groupby('region').agg(x=pd.NamedAgg(column='day', aggfunc='to_pickle'))"), POLICY, None),
    ("groupby_agg_engine_kwargs", fn("return data.cdr.groupby('region').agg('sum', engine_kwargs={'nopython': True})"), POLICY, None),
    ("groupby_agg_engine_numba", fn("return data.cdr.groupby('region').duration_s.agg('sum', engine='numba')"), POLICY, None),
    ("series_agg_keyword_name", fn("return data.cdr.groupby('region').duration_s.agg(x='__sizeof__')"), POLICY, None),
    ("transform_forwarded_name", fn("return data.cdr.transform(func='cumsum', numeric_only=('day', 'to_csv'))"), POLICY, None),
    ("apply_keyword_tuple", fn("return data.cdr.apply(lambda c: c, result_type=('x', '__class__'))"), POLICY, None),
    ("resample_agg_named", fn("return data.cdr.set_index('timestamp').resample('D').agg(x=('day', '__len__'))"), POLICY, None),
    ("rolling_agg_dunder", fn("return data.cdr.duration_s.rolling(2).agg(['sum', '__iter__'])"), POLICY, None),
    ("agg_positional_forward", fn("return data.cdr.groupby('region').duration_s.agg('sum', '__reduce__')"), POLICY, None),
    ("pivot_table_aggfunc_eval", fn("return pd.pivot_table(data.cdr, index='region', values='day', aggfunc='eval')"), POLICY, None),
    ("map_bound_method", fn("return data.cdr.region.map(data.cdr.to_dict)"), POLICY, None),
    ("class_method_smuggle", fn("return data.cdr.duration_s.apply(pd.DataFrame.eval)"), POLICY, None),
    ("read_pickle", fn("return pd.read_pickle('HOSTFILE')"), POLICY, None),
    ("np_load_allow_pickle", fn("return np.load('HOSTFILE', allow_pickle=True)"), POLICY, None),
    ("ndarray_ctypes", fn("return data.cdr.duration_s.to_numpy().ctypes.data"), POLICY, None),
    ("ndarray_view", fn("return data.cdr.duration_s.to_numpy().view('u1')"), POLICY, None),
    ("ndarray_base", fn("return data.cdr.duration_s.to_numpy().base"), POLICY, None),
    ("df_pipe", fn("return data.cdr.pipe(print)"), POLICY, None),
    ("df_style", fn("return data.cdr.style"), POLICY, None),
    ("df_plot", fn("return data.cdr.plot"), POLICY, None),
    ("sticky_violation_swallowed", fn("""
        try:
            data.cdr.eval('1')
        except BaseException:
            pass
        return data.cdr[['msisdn']]
    """), POLICY, None),
    # ---------------------------------- files and network through libraries
    ("to_csv_canary", fn("data.cdr.to_csv('CANARY')\nreturn data.cdr"), POLICY, None),
    ("to_parquet_canary", fn("data.cdr.to_parquet('CANARY')\nreturn data.cdr"), POLICY, None),
    ("to_string_buf", fn("data.cdr.to_string(buf='CANARY')\nreturn data.cdr"), POLICY, None),
    ("np_savetxt", fn("np.savetxt('CANARY', [1, 2])\nreturn data.cdr"), POLICY, None),
    ("read_csv_host_file", fn("return pd.read_csv('HOSTFILE')"), POLICY, None),
    ("read_csv_url", fn("return pd.read_csv('http://127.0.0.1:PORT/x.csv')"), POLICY, None),
    ("read_json_url", fn("return pd.read_json('http://127.0.0.1:PORT/x.json')"), POLICY, None),
    ("np_fromfile", fn("return np.fromfile('HOSTFILE')"), POLICY, None),
    ("open_builtin", fn("return open('HOSTFILE').read()"), POLICY, None),
    # ------------------------------------------ mutation of shared state
    ("facade_attribute_write", fn("np.sum = None\nreturn data.cdr"), POLICY, None),
    ("math_constant_write", fn("math.pi = 3\nreturn data.cdr"), POLICY, None),
    ("pd_set_option", fn("pd.set_option('display.max_rows', 1)\nreturn data.cdr"), POLICY, None),
    ("pd_options", fn("pd.options.mode.copy_on_write = False\nreturn data.cdr"), POLICY, None),
    ("data_column_write", fn("data.cdr['duration_s'] = 0\nreturn data.cdr"), POLICY, None),
    ("data_loc_write", fn("data.cdr.loc[0, 'duration_s'] = 0\nreturn data.cdr"), POLICY, None),
    ("data_inplace_drop", fn("data.cdr.drop(columns=['region'], inplace=True)\nreturn data.cdr"), POLICY, None),
    ("data_insert", fn("data.cdr.insert(0, 'x', 1)\nreturn data.cdr"), POLICY, None),
    ("data_attribute_replace", fn("data.cdr = None\nreturn params"), POLICY, None),
    ("params_class", fn("return params.__class__"), POLICY, None),
    # --------------------------------------------------- forbidden syntax
    ("class_definition", mod("""
        class X:
            pass
        def contributions(data, params):
            return X
    """), POLICY, None),
    ("with_statement", fn("with data as d:\n    return d"), POLICY, None),
    ("match_class_pattern", fn("""
        match 'x':
            case str(format=f):
                return f
    """), POLICY, None),
    ("exec_call", fn("exec('import os')"), POLICY, None),
    ("eval_call", fn("return eval('1')"), POLICY, None),
    ("compile_call", fn("return compile('1', 'x', 'eval')"), POLICY, None),
    ("id_and_hash", fn("return id(data) + hash(data)"), POLICY, None),
    ("clock_timestamp_now", fn("return pd.Timestamp('now')"), POLICY, None),
    ("clock_instance_now", fn("return data.cdr.timestamp.iloc[0].now()"), POLICY, None),
    ("clock_to_datetime_today", fn("return pd.to_datetime('today')"), POLICY, None),
    # ------------------------------------------------------ resource abuse
    ("infinite_loop", fn("while True:\n    pass"), LIMIT, SMALL),
    ("huge_integer_power", fn("x = 7 ** (10 ** 12)\nreturn x"), LIMIT, SMALL),
    ("list_memory_bomb", fn("x = [0] * (10 ** 10)\nreturn x"), LIMIT, SMALL),
    ("string_memory_bomb", fn("x = 'a' * (2 ** 40)\nreturn x"), LIMIT, SMALL),
    ("numpy_memory_bomb", fn("return np.zeros((10 ** 6, 10 ** 6))"), LIMIT, SMALL),
    ("cross_join_blowup", fn("""
        d = data.cdr
        for i in range(6):
            d = d.merge(d, how='cross', suffixes=('', '_' + str(i)))
        return d
    """), LIMIT, SMALL),
    ("memory_error_caught", fn("""
        try:
            x = np.zeros((10 ** 6, 10 ** 6))
        except MemoryError:
            pass
        return data.cdr[['msisdn']]
    """), LIMIT, SMALL),
    ("memory_error_caught_by_exception", fn("""
        try:
            x = 'a' * (2 ** 40)
        except Exception:
            pass
        return data.cdr[['msisdn']]
    """), LIMIT, SMALL),
    ("memory_error_bare_except", fn("""
        for i in range(3):
            try:
                x = [0] * (10 ** 10)
            except:
                continue
        return data.cdr[['msisdn']]
    """), LIMIT, SMALL),
    ("memory_error_swallowed_by_finally", mod("""
        import numpy as np
        def grab():
            try:
                np.ones((10 ** 6, 10 ** 6))
            finally:
                return 0
        def contributions(data, params):
            grab()
            return data.cdr[['msisdn']]
    """), LIMIT, SMALL),
    ("numpy_test_via_agg_name", fn("return data.cdr.agg(numeric_only=('duration_s', 'test'))"), POLICY, None),
    ("print_flood", fn("while True:\n    print('x' * 10000)"), LIMIT, SMALL),
    ("huge_result_rows", fn("return pd.DataFrame({'msisdn': np.arange(5000)})"), LIMIT, TINY_OUTPUT),
    ("huge_result_bytes", fn("return pd.DataFrame({'msisdn': ['x' * 4000] * 900})"), LIMIT, TINY_OUTPUT),
    ("catastrophic_regex", fn("s = pd.Series(['a' * 40 + '!'], dtype=object)\nreturn s.str.match('(a+)+$')"), LIMIT, SMALL),
    ("disk_fill_loop", fn("while True:\n    data.cdr.to_csv('CANARY', mode='a')"), POLICY, SMALL),
    ("wall_clock_busy", fn("x = 0\nwhile True:\n    x += 1"), LIMIT, WALL),
    # ------------------------------------------ exfiltration through errors
    ("raise_value_secret", fn("raise ValueError(str(data.cdr.msisdn.iloc[-1]))"), FAILED, None),
    ("raise_key_secret", fn("raise KeyError(data.cdr.region.iloc[-1])"), FAILED, None),
    ("keyerror_lookup_secret", fn("return data.cdr[data.cdr.region.iloc[-1]]"), FAILED, None),
    ("int_parse_secret", fn("return int(data.cdr.region.iloc[-1])"), FAILED, None),
    ("assert_secret", fn("assert False, data.cdr.region.iloc[-1]"), FAILED, None),
    ("stopiteration_secret", fn("raise StopIteration(str(data.cdr.msisdn.max()))"), FAILED, None),
    ("data_getitem_secret", fn("return data[data.cdr.region.iloc[-1]]"), FAILED, None),
    ("recursion_bomb", mod("""
        def f(n):
            return f(n + 1)
        def contributions(data, params):
            return f(0)
    """), FAILED, None),
    ("policy_message_exfil", fn("return data.cdr.agg(data.cdr.region.iloc[-1])"), POLICY, None),
    ("transform_name_exfil", fn("return data.cdr.groupby('msisdn').duration_s.transform(str(data.cdr.msisdn.max()))"), POLICY, None),
    ("clock_word_from_data", fn("return pd.Timestamp(data.cdr.region.iloc[-1])"), FAILED, None),
    ("non_dataframe_result", fn("return data.cdr.region.iloc[-1]"), FAILED, None),
]


def _run(runtime: Runtime, source: str, limits: Limits | None) -> OpalError | None:
    try:
        runtime.run(source=source, entrypoint="contributions", params={}, limits=limits)
    except OpalError as exc:
        return exc
    return None


def test_suite_is_large_enough() -> None:
    assert len(PAYLOADS) >= 60
    assert len({p[0] for p in PAYLOADS}) == len(PAYLOADS)


@pytest.mark.parametrize(
    "name,source,expected,limits", PAYLOADS, ids=[p[0] for p in PAYLOADS]
)
def test_payload_is_contained(
    runtime: Runtime,
    sandbox_dir: Path,
    listener: Listener,
    name: str,
    source: str,
    expected: int,
    limits: Limits | None,
) -> None:
    canary = sandbox_dir / "canary" / f"{name}.out"
    host = sandbox_dir / "host_secret.txt"
    source = (
        source.replace("CANARY", str(canary))
        .replace("HOSTFILE", str(host))
        .replace("PORT", str(listener.port))
    )
    error = _run(runtime, source, limits)
    assert error is not None, f"{name}: the payload ran to completion"
    assert error.exit_code == expected, f"{name}: {type(error).__name__}: {error}"
    message = str(error)
    assert "\n" not in message
    for leaked in (HOST_SECRET, SECRET_REGION, str(SECRET_MSISDN)):
        assert leaked not in message
    assert not canary.exists()
    assert listener.connections == 0
    if expected == LIMIT:
        assert any(
            word in message
            for word in ("cpu_seconds", "memory", "wall_seconds", "max_output_rows", "max_output_bytes")
        ), message
    if expected == POLICY:
        assert message.startswith("algorithm.py"), message
