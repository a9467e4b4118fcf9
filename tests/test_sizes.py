import pytest

from kmem_magic.sizes import GiB, MiB, format_bytes, itemsize, parse_limit, parse_size


@pytest.mark.parametrize("text, expected", [
    ("4GiB", 4 * GiB), ("4G", 4 * GiB), ("512MiB", 512 * MiB), ("512 mib", 512 * MiB),
    ("1.5GB", 1_500_000_000), ("1024", 1024), ("2TiB", 2 * 1024 * GiB),
])
def test_sizes_parse_in_binary_and_decimal_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "4XB", "-1GiB", "0", "GiB", "1e3"])
def test_bad_sizes_say_what_is_expected(text):
    with pytest.raises(ValueError, match="4GiB|at least 1 byte"):
        parse_size(text)


def test_percent_limits_are_fractions_of_each_device():
    limit = parse_limit("60%")
    assert limit.fraction == pytest.approx(0.6)
    assert limit.bytes_of(10 * GiB) == 6 * GiB
    assert limit.bytes_of(None) is None
    assert str(limit) == "60%"


@pytest.mark.parametrize("text", ["0%", "101%", "-5%", "0.001%"])
def test_percent_out_of_range_is_refused(text):
    with pytest.raises(ValueError, match="percentage limit must be at least 0.1 and at most 100|not a"):
        parse_limit(text)


@pytest.mark.parametrize("text, message", [
    ("4", "a limit of 4 bytes is surely not meant: give a unit"),
    ("1" * 400, "a size must be at most 1024.00 TiB"),
    ("5000TiB", "a size must be at most 1024.00 TiB"),
])
def test_limits_no_one_means_are_one_line_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_limit(text)


def test_small_limits_with_a_unit_and_large_bare_numbers_are_accepted():
    assert parse_limit("32MiB").bytes == 32 * MiB
    assert parse_limit(str(2 * GiB)).bytes == 2 * GiB
    assert parse_limit("0.5%").fraction == pytest.approx(0.005)


def test_byte_limit_as_fraction_is_capped_at_one():
    assert parse_limit("4GiB").fraction_of(8 * GiB) == 0.5
    assert parse_limit("16GiB").fraction_of(8 * GiB) == 1.0
    assert parse_limit("4GiB").fraction_of(None) is None


def test_unknown_prints_as_unknown_never_as_zero():
    assert format_bytes(None) == "unknown"
    assert format_bytes(0) == "0 B"
    assert format_bytes(1536 * MiB) == "1.50 GiB"
    assert format_bytes(-3 * MiB) == "-3.00 MiB"
    assert format_bytes(3 * MiB, signed=True) == "+3.00 MiB"
    assert format_bytes(0, signed=True) == "±0 B"


@pytest.mark.parametrize("name, size", [("float32", 4), ("bfloat16", 2), ("float16", 2),
                                        ("int64", 8), ("uint8", 1)])
def test_itemsize_of_dtype_names(name, size):
    assert itemsize(name) == size


def test_itemsize_of_numpy_dtypes():
    import numpy as np

    assert itemsize(np.dtype("float64")) == 8 and itemsize(np.float16) == 2


@pytest.mark.parametrize("module", ["torch", "tensorflow", "jax.numpy"])
def test_itemsize_of_each_frameworks_dtypes(module):
    framework = pytest.importorskip(module)
    names = ("bfloat16", "float16", "float32")
    assert [itemsize(getattr(framework, n)) for n in names] == [2, 2, 4]
