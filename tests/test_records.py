import numpy as np
import pandas as pd

from warmup import config, records, run


def test_records_are_written_atomically(tmp_path):
    records.write_atomic(tmp_path / "a" / "summary.json", "{}\n")
    records.write_atomic(tmp_path / "a" / "summary.json", '{"status": "running"}\n')
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["summary.json"]
    assert records.read_summary(tmp_path / "a") == {"status": "running"}


def test_metrics_keep_the_contract_columns_first(tmp_path):
    records.write_metrics(tmp_path, pd.DataFrame({"sharpness_iters": [3.0], "step": [0], "train_loss": [0.5]}))
    frame = records.read_metrics(tmp_path)
    assert list(frame.columns) == [*records.METRIC_COLUMNS, "sharpness_iters"]
    assert np.isnan(frame.test_acc[0]) and frame.train_loss[0] == 0.5


def test_only_results_count_as_finished(tmp_path):
    assert records.finished_summary(tmp_path) is None
    for status, finished in (("running", False), ("converged", True), ("diverged", True), ("failed", True)):
        records.write_summary(tmp_path, {"status": status})
        assert (records.finished_summary(tmp_path) is not None) == finished


def test_run_status_rules():
    assert run.status(True, 0.9, 0.1) == "diverged"
    assert run.status(False, 0.149, 0.1) == "failed"  # below 1.5 × chance
    assert run.status(False, float("nan"), 0.1) == "failed"
    assert run.status(False, 0.151, 0.1) == "converged"


def test_flat_config_dots_nested_keys_and_keeps_lists_and_empty_dicts_as_leaves():
    nested = {"model": {"name": "fcn", "widths": [4, 8]}, "seed": 0, "extra": {}, "a": {"b": {"c": None}}}
    assert config.flat(nested) == {"model.name": "fcn", "model.widths": [4, 8], "seed": 0, "extra": {},
                                           "a.b.c": None}


def test_appended_chunks_read_back_as_one_rewrite_of_the_whole_table(tmp_path):
    import numpy as np
    import pandas as pd

    chunks = [pd.DataFrame({"step": [0, 1], "lr": np.float32([0.1, 0.2]), "sharpness_iters": [3.0, np.nan]}),
              pd.DataFrame({"step": [2], "lr": np.float32([0.3]), "sharpness_iters": [4.0]}),
              pd.DataFrame([{"step": 3, "train_loss": 0.25, "test_acc": 0.5}])]  # the final row: other columns
    columns = records.metric_columns(chunks[0])
    (tmp_path / "appended").mkdir()
    for chunk in chunks:
        records.append_metrics(tmp_path / "appended", chunk, columns)
    records.write_metrics(tmp_path, pd.concat(chunks, ignore_index=True))
    assert (tmp_path / "appended" / "metrics.csv").read_text() == (tmp_path / "metrics.csv").read_text()
