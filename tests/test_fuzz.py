"""Bad input, generated: every malformed input ends in a one-line error of the expected kind,
never another exception, a hang, or a silent partial result.

Examples per target are set below (FUZZ_EXAMPLES scales them); the closing note of the
reliability issue lists what they found."""

import io
import json
import math
import os
import pickle
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_wattsup.analysis.dice import DiceInputError, dice, dice_files
from mlflow_wattsup.analysis.importers import safe_pickle
from mlflow_wattsup.analysis.importers.codecarbon import CodeCarbonError, read_csv
from mlflow_wattsup.analysis.importers.eit import EitError, read_folder

SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))
FAST = settings(max_examples=int(300 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=int(60 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))

weird_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**20), 10**20),
    st.text(max_size=5),
    st.none(),
    st.sampled_from([-1.0, 0.0, 1e308, -1e-300]),
)


def sample_dicts():
    return st.fixed_dictionaries(
        {},
        optional={
            "timestamp": st.one_of(weird_floats, st.floats(1.6e9, 1.7e9)),
            "rapl_estimated_attributable_power_draw": weird_floats,
            "rapl_power_draw_absolute": weird_floats,
            "nvidia_estimated_attributable_power_draw": weird_floats,
            "nvidia_draw_absolute": weird_floats,
        },
    )


@st.composite
def eit_folder_contents(draw):
    base = draw(st.floats(1.6e9, 1.7e9))
    good = draw(st.lists(st.floats(0, 3600), max_size=20))
    lines = [
        json.dumps(
            {
                "timestamp": base + d,
                "rapl_estimated_attributable_power_draw": draw(st.floats(0, 500)),
                "rapl_power_draw_absolute": 100.0,
            }
        )
        for d in good
    ]
    lines += [json.dumps(d, allow_nan=True) for d in draw(st.lists(sample_dicts(), max_size=10))]
    lines += draw(st.lists(st.text(max_size=40), max_size=5))  # junk lines
    draw(st.randoms()).shuffle(lines)
    data = "\n".join(lines).encode()
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, max(0, len(data))))]  # truncated anywhere
    if draw(st.booleans()):
        data += draw(st.binary(max_size=30))
    offset_h = draw(st.sampled_from([-8, -4, 0, 1, 5.5, 9]))
    start = (
        datetime.utcfromtimestamp(base)
        + timedelta(hours=offset_h)
        - timedelta(seconds=draw(st.floats(0, 100)))
    )
    end = start + timedelta(seconds=draw(st.floats(-100, 5000)))
    info = {
        "experiment_start": start,
        "experiment_end": end,
        "region_carbon_intensity_estimate": {"carbonIntensity": draw(weird_floats)},
    }
    if draw(st.booleans()):
        info["gpu_info"] = [{"name": "GPU"}]
    raw_info = pickle.dumps(info) if draw(st.integers(0, 5)) else draw(st.binary(max_size=200))
    return data, raw_info


def _check_run(r):
    for v in (r.cpu_j, r.gpu_j, r.machine_cpu_j, r.machine_gpu_j):
        assert math.isfinite(v) and v >= 0
    assert r.duration_s >= 0
    if r.intensity_g_per_kwh is not None:
        assert math.isfinite(r.intensity_g_per_kwh) and r.intensity_g_per_kwh >= 0
    for s in r.stages:
        assert s.end_s >= s.start_s and s.cpu_j >= 0


@FAST
@given(eit_folder_contents())
def test_fuzz_eit_importer(contents):
    data, raw_info = contents
    with tempfile.TemporaryDirectory() as d:
        imp = Path(d) / "run" / "impacttracker"
        imp.mkdir(parents=True)
        (imp / "data.json").write_bytes(data)
        (imp / "info.pkl").write_bytes(raw_info)
        try:
            r = read_folder(Path(d) / "run")
        except EitError as exc:
            assert "\n" not in str(exc)
            return
        _check_run(r)


cc_cell = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12), weird_floats.map(str)
)


@FAST
@given(st.lists(st.lists(cc_cell, min_size=0, max_size=8), max_size=6), st.booleans(), st.binary(max_size=40))
def test_fuzz_codecarbon_importer(rows, with_header, junk):
    header = (
        "timestamp,project_name,run_id,duration,emissions,energy_consumed,"
        "cpu_energy,gpu_energy,ram_energy,pue\n"
    )
    # cells without quotes or line breaks, so that one list is one CSV row (an unbalanced quote
    # legitimately joins lines into one field, which read_csv then reports as one bad row)
    clean = lambda c: "".join(ch for ch in c if ch not in '"\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029')  # noqa: E731
    body = "\n".join(",".join(clean(c) for c in r) for r in rows)
    raw = ((header if with_header else "") + body).encode() + junk
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "emissions.csv"
        f.write_bytes(raw)
        try:
            runs, notes = read_csv(f)
        except CodeCarbonError as exc:
            assert "\n" not in str(exc)
            return
        for r in runs:
            _check_run(r)
        # without the header the first row is read as one, lacking the required columns
        assert with_header, f"read without a header: {len(runs)} runs, notes {notes}"
        # every data row becomes a run or a note (rows of empty cells are blank lines: CSV skips them)
        assert len(runs) + len(notes) >= len([r for r in rows if any(clean(c).strip() for c in r)])


@SLOW
@given(st.binary(max_size=600), st.sampled_from([".nii.gz", ".nii", ".mgz", ".mgh"]))
def test_fuzz_dice_loader_bytes(blob, suffix):
    with tempfile.TemporaryDirectory() as d:
        a = Path(d) / f"a{suffix}"
        a.write_bytes(blob)
        with pytest.raises(DiceInputError) as info:
            dice_files(a, a)
        assert "\n" not in str(info.value)


label_dtypes = st.sampled_from(
    [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.uint64, np.float32, np.float64, bool]
)


@st.composite
def label_pair(draw):
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=3, max_size=3)))
    other = (
        shape if draw(st.integers(0, 4)) else tuple(draw(st.lists(st.integers(0, 6), min_size=3, max_size=3)))
    )
    dt = draw(label_dtypes)
    values = st.one_of(
        st.integers(-3, 5),
        st.integers(2**40, 2**40 + 3),
        st.integers(0, 2**63 - 1),
        st.sampled_from([0.5, float("nan")]),
    )

    def arr(shp):
        n = int(np.prod(shp))
        vals = draw(st.lists(values, min_size=n, max_size=n))
        with np.errstate(all="ignore"):
            try:
                return np.array(vals, dtype=object).astype(dt).reshape(shp)
            except (OverflowError, ValueError, TypeError):
                return np.zeros(shp, dt)

    return arr(shape), arr(other)


def brute(p, r):
    out = {}
    for lab in np.union1d(np.unique(p), np.unique(r)):
        if lab == 0:
            continue
        pp, rr = p == lab, r == lab
        out[int(lab)] = 2.0 * np.logical_and(pp, rr).sum() / (pp.sum() + rr.sum())
    return out


@FAST
@given(label_pair())
def test_fuzz_dice_arrays(pair):
    p, r = pair
    try:
        res = dice(p, r, names={})
    except DiceInputError as exc:
        assert "\n" not in str(exc)
        assert p.shape != r.shape or p.dtype.kind == "f"
        return
    for s in res.scores:
        assert 0.0 <= s.dice <= 1.0
    if p.dtype.kind in "iub":
        assert {s.label: s.dice for s in res.scores} == pytest.approx(
            brute(
                p.astype(np.int64) if p.dtype != np.uint64 else p,
                r.astype(np.int64) if r.dtype != np.uint64 else r,
            )
        )


argv_tokens = st.one_of(
    st.sampled_from(
        [
            "run",
            "report",
            "dice",
            "flops",
            "import",
            "plot",
            "regions",
            "flush",
            "--",
            "--pue",
            "--region",
            "--interval",
            "--carbon-intensity",
            "--tag",
            "--experiment",
            "--format",
            "--layout",
            "-o",
            "--labels",
            "--merge",
            "eit",
            "codecarbon",
            "trace",
            "--run-id",
            "nan",
            "-1",
            "1e400",
            "x=y",
            "",
        ]
    ),
    st.text(max_size=10),
)


@FAST
@given(st.lists(argv_tokens, max_size=8))
def test_fuzz_option_parsing(argv):
    """The parser (and the validation done before any work) ends in a result or one line + exit 2."""
    import contextlib

    from mlflow_wattsup.cli import build_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            assert exc.code in (0, 2, None)
            if exc.code == 2:
                assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()


@FAST
@given(
    st.one_of(st.none(), st.text(max_size=12), weird_floats),
    st.one_of(st.none(), st.text(max_size=12)),
    st.one_of(st.none(), st.text(max_size=8), weird_floats),
)
def test_fuzz_carbon_and_project_params(intensity, region, pue):
    from mlflow_wattsup.analysis.carbon import CarbonConfig, CarbonConfigError
    from mlflow_wattsup.projects.params import ParamError, float_param, int_param, name_param

    try:
        c = CarbonConfig.resolve(intensity, region or None, pue)
        assert math.isfinite(c.intensity.g_per_kwh) and c.intensity.g_per_kwh >= 0 and c.pue >= 1
    except CarbonConfigError as exc:
        assert "\n" not in str(exc)
    for fn in (
        lambda v: int_param("threads", v, 1, 1024),
        lambda v: float_param("pue", v, 1.0),
        lambda v: name_param("sid", v),
    ):
        try:
            fn(intensity)
        except ParamError as exc:
            assert "\n" not in str(exc)


@FAST
@given(st.binary(max_size=300))
def test_fuzz_safe_pickle(blob):
    try:
        safe_pickle.load(blob)
    except safe_pickle.UnsafePickleError as exc:
        assert len(str(exc).splitlines()) == 1, str(exc)  # even when it quotes the data


def test_safe_pickle_error_quoting_a_line_break_is_one_line():
    # FLOAT opcode with a non-number: float() quotes the text, the line feed that ends it included
    with pytest.raises(safe_pickle.UnsafePickleError) as info:
        safe_pickle.load(b"F\xff\n.")
    assert len(str(info.value).splitlines()) == 1 and "could not convert" in str(info.value)
