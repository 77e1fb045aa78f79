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


def test_train_writes_only_where_it_may(tmp_path):
    """A new run needs an empty folder (a lock aside); a resume needs an unfinished run of its own kind."""
    import pytest

    from perceiver_med.errors import UserError

    run = RunDir(tmp_path / "run")
    run.check_target(resume=False)  # absent: fine
    run.path.mkdir()
    run.lock_file.write_text("")
    run.check_target(resume=False)  # a lock alone is no file of a run
    for resume, cv, words in ((True, False, "has no config.json"), (True, True, "has no cv.json")):
        with pytest.raises(UserError, match=words):
            run.check_target(resume, cv)
    run.config_file.write_text("{}")
    with pytest.raises(UserError, match="already holds files"):
        run.check_target(resume=False)
    with pytest.raises(UserError, match="has no checkpoint.pt to resume from"):
        run.check_target(resume=True)
    run.checkpoint_file.write_bytes(b"")
    run.check_target(resume=True)
    run.metrics_file.write_text("{}")
    with pytest.raises(UserError, match="is complete"):
        run.check_target(resume=True)


def test_a_failed_start_leaves_nothing_unless_something_can_be_resumed(tmp_path):
    single = RunDir(tmp_path / "single")
    single.path.mkdir()
    for path in (single.config_file, single.splits_file):
        path.write_text("x")
    single.discard_unfinished()
    assert list(single.path.iterdir()) == []
    for path in (single.config_file, single.splits_file, single.checkpoint_file):
        path.write_text("x")
    single.discard_unfinished()  # a checkpoint to resume from: kept whole
    assert len(list(single.path.iterdir())) == 3

    cv = RunDir(tmp_path / "cv")
    cv.fold(1).path.mkdir(parents=True)
    for path in (cv.cv_file, cv.splits_file):
        path.write_text("x")
    cv.discard_unfinished()
    assert not cv.cv_file.exists() and not cv.splits_file.exists()
    for path in (cv.cv_file, cv.splits_file, cv.fold(1).metrics_file):
        path.write_text("x")
    cv.discard_unfinished()  # a finished fold: kept
    assert cv.cv_file.exists() and cv.splits_file.exists()


def test_folds_are_the_fold_runs_in_order_of_their_numbers(tmp_path):
    cv = RunDir(tmp_path)
    for name in ("fold_10", "fold_2", "fold_x", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "fold_3").write_text("a file, not a run")
    assert [fold.path.name for fold in cv.folds()] == ["fold_2", "fold_10"]
    assert cv.fold(2) in cv.folds()


def test_metrics_that_are_missing_or_unreadable_are_one_line_errors(tmp_path):
    import pytest

    from perceiver_med.errors import UserError

    run = RunDir(tmp_path)
    with pytest.raises(UserError, match="has no metrics.json"):
        run.metrics()
    run.metrics_file.write_text("{not json")
    with pytest.raises(UserError, match="cannot be read"):
        run.metrics()
    run.write_metrics({"test": {"n": 3}})
    assert run.metrics() == {"test": {"n": 3}}
