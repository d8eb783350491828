"""User values on the wire: msgpack for plain data, ext types for tuples, Refs and numpy arrays, and a
cloudpickle fallback for everything else."""

from __future__ import annotations

import math

import msgpack
import pytest

from cbctl.errors import DecodeError, InvalidArgument
from cbctl.runtime.wire.serialization import EXT_NDARRAY, EXT_PICKLE, EXT_REF, EXT_TUPLE, Ref, decode, encode, find_refs


def round_trip(value):
    return decode(encode(value))


def top_level_ext_code(data: bytes) -> int | None:
    """The ext type code of an encoded value, or None for plain msgpack."""
    found = msgpack.unpackb(data, ext_hook=lambda code, _: ("ext", code), raw=False, strict_map_key=False)
    return found[1] if isinstance(found, tuple) and found[:1] == ("ext",) else None


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2**63 - 1, -(2**63), 1.5, -0.0, math.inf, "", "text", "ünïcødé ✓",
    b"", b"\x00\xff", [], {}, [1, "two", 3.0, None], {"a": 1, "b": [2, 3]}, {1: "int key", 2: None},
])
def test_plain_values_round_trip_as_plain_msgpack(value):
    data = encode(value)
    assert top_level_ext_code(data) is None, "plain data must not need an ext type"
    result = decode(data)
    assert result == value and type(result) is type(value)


def test_nan_round_trips():
    assert math.isnan(round_trip(math.nan))


def test_bytes_and_str_stay_distinct():
    assert round_trip([b"x", "x"]) == [b"x", "x"]
    assert [type(v) for v in round_trip([b"x", "x"])] == [bytes, str]


@pytest.mark.parametrize("value", [(), (1,), (1, "a", None), ((1, 2), [3, (4,)])])
def test_tuples_stay_tuples(value):
    assert top_level_ext_code(encode(value)) == EXT_TUPLE
    result = round_trip(value)
    assert result == value and type(result) is tuple


def test_nested_containers_keep_their_types():
    value = {"list": [1, (2, 3), {"inner": (b"\x01", [None])}], "tuple": ([], {}), "ref": [Ref("k")]}
    result = round_trip(value)
    assert result == value
    assert type(result["list"][1]) is tuple
    assert type(result["list"][2]["inner"]) is tuple
    assert type(result["list"][2]["inner"][1]) is list
    assert type(result["tuple"]) is tuple


def test_ref_round_trips_and_is_found():
    ref = Ref("users/42")
    assert top_level_ext_code(encode(ref)) == EXT_REF
    assert round_trip(ref) == ref and isinstance(round_trip(ref), Ref)
    args = round_trip([1, Ref("a"), "b", Ref("c")])
    assert find_refs(args) == ["a", "c"]


@pytest.mark.parametrize("bad, says", [("", "non-empty string"), (None, "non-empty string"), (3, "non-empty"),
                                       (b"key", "non-empty"), ("__cb/fn/increment", "cbctl's own"),
                                       ("\udcff", "UTF-8 cannot carry"), ("k" * 5000, "over the limit")])
def test_ref_rejects_bad_keys(bad, says):
    with pytest.raises(InvalidArgument, match=says):
        Ref(bad)


class Point:
    """A user class defined in the test module: msgpack cannot carry it, cloudpickle can."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (other.x, other.y) == (self.x, self.y)


def test_user_class_instance_uses_the_pickle_fallback():
    point = Point(1, 2)
    assert top_level_ext_code(encode(point)) == EXT_PICKLE
    assert round_trip(point) == point
    assert round_trip({"p": [point, (point,)]}) == {"p": [point, (point,)]}


def test_lambda_and_closure_use_the_pickle_fallback():
    offset = 10
    fn = round_trip(lambda x: x + offset)
    assert fn(5) == 15


@pytest.mark.parametrize("value", [{1, 2, 3}, frozenset({"a"}), complex(1, 2), range(3)])
def test_other_builtins_use_the_pickle_fallback(value):
    assert top_level_ext_code(encode(value)) == EXT_PICKLE
    assert round_trip(value) == value


def test_bool_subclass_and_int_subclass_survive():
    class Level(int):
        pass

    result = round_trip(Level(3))
    assert result == 3 and type(result).__name__ == "Level"


# --- numpy (optional) ---------------------------------------------------------------------------------------


@pytest.fixture
def np():
    return pytest.importorskip("numpy")


@pytest.mark.parametrize("dtype", ["int8", "uint16", "int32", "int64", "float16", "float32", "float64",
                                   "complex128", "bool", ">i4", "<f8", "U5", "S3", "datetime64[ns]",
                                   "timedelta64[s]"])
@pytest.mark.parametrize("shape", [(0,), (5,), (2, 3), (2, 1, 4)])
def test_numpy_arrays_round_trip_without_pickle(np, dtype, shape):
    array = np.arange(int(np.prod(shape))).reshape(shape).astype(dtype)
    data = encode(array)
    assert top_level_ext_code(data) == EXT_NDARRAY
    assert b"cloudpickle" not in data and b"numpy.core" not in data
    result = decode(data)
    assert isinstance(result, np.ndarray)
    assert result.dtype == array.dtype and result.shape == array.shape
    np.testing.assert_array_equal(result, array)
    assert result.flags.writeable, "decoded arrays must be ordinary writable arrays"


@pytest.mark.parametrize("make", [
    lambda np: np.arange(20).reshape(4, 5)[:, ::2],
    lambda np: np.arange(24, dtype="float32").reshape(2, 3, 4).transpose(2, 0, 1),
    lambda np: np.asfortranarray(np.arange(6).reshape(2, 3)),
    lambda np: np.arange(10)[::-1],
], ids=["strided-columns", "transposed", "fortran-order", "reversed"])
def test_numpy_non_contiguous_arrays_round_trip(np, make):
    array = make(np)
    assert not array.flags.c_contiguous
    result = round_trip(array)
    np.testing.assert_array_equal(result, array)
    assert result.dtype == array.dtype


def test_numpy_zero_d_array_and_scalars(np):
    zero_d = np.array(3.5)
    result = round_trip(zero_d)
    assert isinstance(result, np.ndarray) and result.shape == () and result == 3.5
    for scalar in (np.float32(1.25), np.int64(-7), np.bool_(True), np.uint8(255), np.complex64(1 + 2j),
                   np.datetime64("2020-01-02T03:04:05", "s"), np.str_("hi")):
        out = round_trip(scalar)
        assert isinstance(out, np.generic), f"{scalar!r} came back as {type(out).__name__}"
        assert out.dtype == scalar.dtype and out == scalar


def test_numpy_inside_containers(np):
    value = {"weights": [np.ones((2, 2)), (np.zeros(3, dtype="int16"),)], "step": np.int32(4)}
    result = round_trip(value)
    np.testing.assert_array_equal(result["weights"][0], np.ones((2, 2)))
    assert type(result["weights"][1]) is tuple and result["weights"][1][0].dtype == np.int16
    assert result["step"] == 4 and result["step"].dtype == np.int32


def test_numpy_object_arrays_fall_back_to_pickle(np):
    array = np.array([{"a": 1}, None, "x"], dtype=object)
    assert top_level_ext_code(encode(array)) == EXT_PICKLE
    result = round_trip(array)
    assert result.dtype == object and list(result) == list(array)


def test_numpy_large_array_is_raw_bytes(np):
    array = np.random.default_rng(0).random(100_000)
    data = encode(array)
    assert len(data) < array.nbytes + 200, "arrays travel as their raw buffer plus a small header"
    np.testing.assert_array_equal(decode(data), array)


# --- arrays that are more than a dtype string and a buffer (issue 16) ---------------------------------------


def same_array(np, a, b) -> bool:
    """Exactly the same value: type, dtype (field names included), shape and every byte (NaN payloads too)."""
    if type(a) is not type(b) or a.dtype != b.dtype or a.shape != b.shape:
        return False
    if isinstance(a, np.ma.MaskedArray):
        return (np.array_equal(np.ma.getmaskarray(a), np.ma.getmaskarray(b))
                and same_array(np, np.asarray(a.data), np.asarray(b.data)))
    if a.dtype.hasobject:
        return a.tolist() == b.tolist()
    return a.tobytes() == b.tobytes()


def test_structured_record_and_masked_arrays_keep_what_makes_them(np):
    structured = np.array([(1, 2.5, b"ab")], dtype=[("a", "<i4"), ("b", ">f8"), ("c", "S2")])
    records = np.rec.array([(1, 2.0), (3, 4.0)], dtype=[("x", "i4"), ("y", "f8")])
    masked = np.ma.array([1, 2, 3], mask=[0, 1, 0], fill_value=7)
    nested = np.zeros(2, dtype=[("p", [("q", "i2"), ("r", "f4", (2,))])])
    for value in (structured, records, masked, nested, structured[0], np.ma.masked_invalid([1.0, np.nan])):
        result = round_trip(value)
        assert type(result) is type(value) and result.dtype == value.dtype, (value, result)
        assert result.dtype.names == value.dtype.names
    assert round_trip(records).x.tolist() == [1, 3]
    assert round_trip(masked).mask.tolist() == [False, True, False] and round_trip(masked).fill_value == 7


def test_unstructured_void_round_trips(np):
    value = np.array([b"abcdefg", b"1234567"], dtype="V7")
    assert same_array(np, round_trip(value), value)


def test_numpy_string_dtype_is_not_sent_as_its_pointers(np):
    if not hasattr(np, "dtypes") or not hasattr(np.dtypes, "StringDType"):
        pytest.skip("numpy without StringDType")
    value = np.array(["a", "much longer string than sixteen bytes"], dtype=np.dtypes.StringDType())
    assert round_trip(value).tolist() == value.tolist()


def test_every_numpy_dtype_round_trips_exactly():
    np = pytest.importorskip("numpy")
    hypothesis = pytest.importorskip("hypothesis")
    npst = pytest.importorskip("hypothesis.extra.numpy")
    st = hypothesis.strategies
    dtypes = st.one_of(npst.scalar_dtypes(), npst.byte_string_dtypes(), npst.unicode_string_dtypes(),
                       npst.array_dtypes(allow_subarrays=True), npst.nested_dtypes(),
                       npst.datetime64_dtypes(), npst.timedelta64_dtypes(),
                       st.sampled_from([np.dtype(">i8"), np.dtype("<c16"), np.dtype(">f2")]))
    arrays = npst.arrays(dtypes, npst.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(arrays, st.booleans(), st.data())
    def check(array, mask_it, data):
        value = array
        if mask_it and array.dtype.names is None and array.ndim:
            mask = data.draw(npst.arrays(bool, array.shape))
            value = np.ma.array(array, mask=mask)
        for candidate in (value, value.T if value.ndim > 1 else value):
            assert same_array(np, round_trip(candidate), candidate)
        if array.ndim == 0 and type(array[()]) is not np.ndarray:  # a numpy scalar
            scalar = array[()]
            result = round_trip(scalar)
            assert type(result) is type(scalar) and result.dtype == scalar.dtype
            assert np.asarray(result).tobytes() == np.asarray(scalar).tobytes()

    check()


def test_object_arrays_round_trip_through_pickle(np):
    value = np.array([{"a": 1}, None, (1, 2)], dtype=object)
    assert top_level_ext_code(encode(value)) == EXT_PICKLE
    assert round_trip(value).tolist() == value.tolist()


# --- values that cannot be decoded ---------------------------------------------------------------------------


def test_damaged_bytes_are_a_decode_error_with_a_hint():
    with pytest.raises(DecodeError, match="not a value cbctl wrote"):
        decode(b"\xc1garbage")
    with pytest.raises(DecodeError, match="not a value cbctl wrote"):
        decode(encode([1, 2])[:-1])


def test_a_value_pickled_by_reference_to_a_missing_module_names_it(monkeypatch):
    import sys
    import types

    module = types.ModuleType("module_only_the_writer_had")  # the writer had it...
    exec("class Absent:\n    pass\n", module.__dict__)
    module.Absent.__module__ = module.__name__
    monkeypatch.setitem(sys.modules, module.__name__, module)
    data = encode(module.Absent())
    monkeypatch.delitem(sys.modules, module.__name__)  # ...the reader has not
    with pytest.raises(DecodeError, match="module 'module_only_the_writer_had', which cannot be imported here"):
        decode(data)


class Unpicklable:
    def __reduce__(self):
        return (_raise_on_load, ())


def _raise_on_load():
    raise RuntimeError("no way back" * 1000)


def test_an_unpickling_that_raises_is_a_decode_error_cut_short():
    with pytest.raises(DecodeError, match="unpickling it raised RuntimeError: no way back") as raised:
        decode(encode(Unpicklable()))
    assert len(str(raised.value)) < 500
