"""Result files name their inputs relative to the working directory when under it (no machine's
absolute paths in shipped results), absolute otherwise."""
import os

from dexwm_planner.paths import recorded_path, same_file


def test_recorded_path_is_relative_under_the_working_directory(tmp_path, monkeypatch):
    inside = tmp_path / "work"
    (inside / "models").mkdir(parents=True)
    outside = tmp_path / "elsewhere" / "data"
    monkeypatch.chdir(inside)
    assert recorded_path(inside / "models" / "a.pt") == os.path.join("models", "a.pt")
    assert recorded_path("models/../models/a.pt") == os.path.join("models", "a.pt")
    assert recorded_path(outside) == str(outside)
    # A sibling whose name starts like the working directory is not under it.
    assert recorded_path(tmp_path / "workshop") == str(tmp_path / "workshop")
    assert same_file("models/a.pt", inside / "models" / "a.pt")
    assert same_file(str(outside), outside) and not same_file(None, outside)
    assert not same_file("models/b.pt", inside / "models" / "a.pt")
