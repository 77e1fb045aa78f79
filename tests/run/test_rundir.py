"""RunDir: what a run directory says about itself."""
from perceiver_med.run.rundir import RunDir


def test_an_unfinished_run_names_the_command_that_continues_it(tmp_path):
    single, cv = RunDir(tmp_path / "single"), RunDir(tmp_path / "cv")
    for run in (single, cv):
        run.path.mkdir()
        assert run.resume_command() is None  # stopped before a first epoch ended: nothing to continue
    single.checkpoint_file.write_bytes(b"")
    assert single.resume_command() == f"perceiver-med train --resume --out {single.path}"
    single.metrics_file.write_text("{}")
    assert single.resume_command() is None  # finished: resume refuses it
    cv.cv_file.write_text("{}")
    assert cv.resume_command() == f"perceiver-med train --resume --cv --out {cv.path}"
    cv.fold(0).path.mkdir()
    cv.fold(0).checkpoint_file.write_bytes(b"")  # a fold stopped within an epoch: still the whole is continued
    assert cv.resume_command() == f"perceiver-med train --resume --cv --out {cv.path}"
    cv.config_file.write_text("{}")
    assert cv.resume_command() is None  # config.json is written last: the cross-validation is whole
