"""Per-leaf units (the netCDF ``units`` attribute) and the plots that use them."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import xarray as xr

from trajstore import (
    EveryNStep,
    HDF5StorageReader,
    HDF5StorageWriter,
    Once,
    RemoteStorageWriter,
    WriterGroupConfig,
    connect,
    view,
)
from trajstore.errors import FieldNotFoundError, SchemaError
from trajstore.frequency import LoggingFrequency
from trajstore.plotting import pick_field, plot_field

STATE = {"pos": np.zeros((4, 3), np.float32), "e": {"total": np.float32(1), "kin": np.float32(2)}}


def config(**units):
    return {
        "traj": WriterGroupConfig(
            view(lambda s: s["pos"]), EveryNStep(5), units=units.get("traj", "nm")
        ),
        "energy": WriterGroupConfig(
            view(lambda s: s["e"]), EveryNStep(1), units=units.get("energy", {"total": "eV"})
        ),
        "box": WriterGroupConfig(view(lambda s: s["pos"]), Once()),
    }


def write(path, cfg=None, steps=10):
    with HDF5StorageWriter(path, cfg or config(), STATE, compile_views=False) as log:
        for step in range(steps):
            log.log({"pos": STATE["pos"] + step, "e": STATE["e"]}, step)


def test_units_are_stored_as_netcdf_attributes(tmp_path):
    write(tmp_path / "r.h5")
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f["traj/traj"].attrs["units"] == b"nm"
        assert f["energy/total"].attrs["units"] == b"eV"
        assert "units" not in f["energy/kin"].attrs
        assert "units" not in f["box/box"].attrs
    with xr.open_dataset(tmp_path / "r.h5", engine="h5netcdf", group="energy") as ds:
        assert ds.total.attrs["units"] == "eV"
    with xr.open_dataset(tmp_path / "r.h5", engine="trajstore", group="traj") as ds:
        assert ds.traj.attrs["units"] == "nm"
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        assert reader.focus_group("energy").spec.leaves[1].units == "eV"


def test_units_travel_to_the_store(store):
    with RemoteStorageWriter(store.address, "u", config(), STATE, compile_views=False) as log:
        log.log(STATE, 0)
    with h5py.File(store.run_file("u"), "r") as f:
        assert f["energy/total"].attrs["units"] == b"eV"
    with connect(store.address) as client, client.open_run("u") as reader:
        ds = reader.focus_group("traj").to_xarray()
        assert ds.traj.attrs["units"] == "nm"


@pytest.mark.parametrize(
    ("units", "match"),
    [
        ({"traj": "Å"}, "printable ASCII"),
        ({"traj": "m" * 65}, "at most 64"),
        ({"traj": 3}, "must be a string"),
        ({"energy": {"nope": "eV"}}, "no leaf; leaves: kin, total"),
        ({"energy": "eV"}, "fits a view of one array"),
        ({"energy": {"total": "e\nV"}}, "printable ASCII"),
    ],
)
def test_bad_units_are_refused_before_a_file_is_made(tmp_path, units, match):
    with pytest.raises(SchemaError, match=match):
        write(tmp_path / "r.h5", config(**units))
    assert not (tmp_path / "r.h5").exists()


def test_units_name_leaves_by_path_or_keystr(tmp_path):
    write(tmp_path / "r.h5", config(energy={"['kin']": "kJ/mol", "total": "eV"}))
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f["energy/kin"].attrs["units"] == b"kJ/mol"


def test_appending_with_other_units_keeps_the_files(tmp_path):
    write(tmp_path / "r.h5")
    with HDF5StorageWriter(
        tmp_path / "r.h5", config(traj="m"), STATE, mode="append", compile_views=False
    ) as log:
        log.log(STATE, 10)
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f["traj/traj"].attrs["units"] == b"nm"


def test_a_plot_labels_step_field_units_run_and_group(tmp_path):
    write(tmp_path / "r.h5", steps=20)
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        energy = plot_field(reader.focus_group("energy"), "total", run="proj/r").axes[0]
        assert energy.get_xlabel() == "step"
        assert energy.get_ylabel() == "total [eV]"
        assert energy.get_title() == "proj/r — energy"
        traj = plot_field(reader.focus_group("traj"), run="proj/r").axes[0]
        assert traj.get_ylabel() == "mean of traj [nm]"
        x = traj.lines[0].get_xdata()
        np.testing.assert_array_equal(x, [0, 5, 10, 15])  # steps, not frames
        with pytest.raises(SchemaError, match="logged once"):
            plot_field(reader.focus_group("box"))


def test_fields_are_picked_by_name_and_misses_list_them(tmp_path):
    write(tmp_path / "r.h5")
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        energy = reader.focus_group("energy").spec
        traj = reader.focus_group("traj").spec
    assert pick_field(energy, "total") == 1 and pick_field(energy, "['kin']") == 0
    assert pick_field(traj, None) == 0
    with pytest.raises(FieldNotFoundError, match="choose one among: kin, total"):
        pick_field(energy, None)
    with pytest.raises(FieldNotFoundError, match=r"one value \(traj\), not 'pos': leave the field"):
        pick_field(traj, "pos")


class Primes(LoggingFrequency):
    def should_log(self, step):
        return step in (2, 3, 5, 7)

    def leading_shape(self, total_steps):
        return (4,)

    def dataset_index(self, step):
        return (2, 3, 5, 7).index(step)


def test_a_custom_frequency_plots_by_frame(tmp_path):
    cfg = {"x": WriterGroupConfig(view(lambda s: s["e"]["total"]), Primes())}
    write(tmp_path / "r.h5", cfg)
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        axes = plot_field(reader.focus_group("x")).axes[0]
    assert axes.get_xlabel() == "frame"
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert "step" not in f["x"]  # its steps are not known where frames are written
