"""Tests of tool/report/tables.py: a run's table by key, every run of a dataset in one table, the export."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import main
import faults
from conftest import copy_run, files_in, leftovers, results_of, run_main
from tool.report.export import export
from tool.results import read_results, read_scores
from tool.report import tables as report
from tool.errors import UserError


def _result(auroc, **others):
    """A trial's results with score "recon" of this AUROC (and other scores: {name: AUROC})."""
    def metrics(value):
        return {"auroc": value, "auprc": value / 2, "f1_oracle": 0.5, "f1_val_threshold": 0.4}

    return {"metrics": {"recon": metrics(auroc), **{name: metrics(v) for name, v in others.items()}}}


def test_table_is_built_by_key_and_missing_runs_show_a_dash():
    results = {(0, 0): _result(0.9), (1, 0): _result(0.7), (0, 1): _result(0.8)}  # (1, 1) missing
    header, rows = report.table_rows(results, [0, 1], ["zero", "one"], [0, 1])
    assert header[:2] == ["class", "AUROC"]
    by_class = {row[0]: row for row in rows}
    assert by_class["0 zero"][1] == "85.00 ± 5.00"
    assert by_class["1 one"][1] == "70.00"  # one seed: no ± shown
    # the mean row uses only seeds with every class finished: seed 0 -> (0.9 + 0.7) / 2
    assert by_class["mean"][1] == "80.00"
    assert report.table_rows({}, [0, 1], ["zero", "one"], [0])[1][0][1] == "-"
    csv_text = report.table_csv(results, [0, 1], ["zero", "one"], [0, 1])
    assert csv_text.splitlines()[0].startswith("class,name,auroc_mean,auroc_std")


def test_the_table_shows_the_score_asked_for():
    results = {(0, 0): _result(0.9, other=0.6), (1, 0): _result(0.7, other=0.4)}
    rows = {row[0]: row for row in report.table_rows(results, [0, 1], ["zero", "one"], [0], score="other")[1]}
    assert rows["0 zero"][1] == "60.00" and rows["mean"][1] == "50.00"
    # a trial without the score is missing ("-"), unless it has only one (a classical detector's)
    assert report.table_rows(results, [0, 1], ["zero", "one"], [0], score="nope")[1][0][1] == "-"
    detector = {(0, 0): {"metrics": {"knn": _result(0.8)["metrics"]["recon"]}}}
    assert report.table_rows(detector, [0], ["zero"], [0], score="recon")[1][0][1] == "80.00"


def test_compare_puts_every_model_in_one_table(data_dir, tmp_path):
    for model in ("cascade", "knn"):
        run_main(data_dir, tmp_path, "--model", model, "--classes", "0", "1", "--seeds", "0", "--epochs", "1")
    best = main.run(["--compare", str(tmp_path)])  # SCORE "best": each network's best score, named
    assert "| cascade [fused-lof] (classes 0 1 only) |" in best and "| knn [knn] (classes 0 1 only) |" in best
    text = main.run(["--compare", str(tmp_path), "--score", "recon"])
    assert (tmp_path / "comparison.md").read_text() == text
    rows = {line.split("|")[1].strip().removesuffix(" (classes 0 1 only)"): line for line in text.splitlines()
            if line.startswith("| ")}
    knn = results_of(next((tmp_path / "digits" / "knn").iterdir()))
    mean = np.mean([r["metrics"]["knn"]["auroc"] for r in knn.values()]) * 100
    assert f"{mean:.2f}" in rows["knn"] and "cascade" in rows
    assert "1 (2/2 trials)" in rows["cascade"]
    assert "0" in rows and "1" in rows and "0 0" not in rows  # the per-class AUROC table, digits named once

    # a run without the score asked for is named as left out, not dropped without a word
    text = main.run(["--compare", str(tmp_path), "--score", "transform"])
    assert "Left out, without the score transform: cascade (--score all" in text
    assert "| knn (classes 0 1 only) |" in text and "| cascade" not in text  # a classical detector: its own score

    # an ablation: runs of one model with other settings get a row each, labelled by what differs
    run_main(data_dir, tmp_path, "--classes", "0", "1", "--seeds", "0", "--epochs", "2")
    labels = [line.split("|")[1].strip().removesuffix(" (classes 0 1 only)")
              for line in main.run(["--compare", str(tmp_path), "--score", "recon"]).splitlines()
              if line.startswith("| cascade")]
    assert labels[:2] == ["cascade epochs=1", "cascade epochs=2"]

    # a run planned with more seeds than have finished says how many the mean is over
    partial = tmp_path / "partial"
    run_main(data_dir, partial, "--model", "knn", "--classes", "0", "1", "--seeds", "0", "1")
    for path in partial.glob("digits/knn/*/class1_seed1/results.json"):
        path.unlink()
    assert "1 of 2 (3/4 trials)" in main.run(["--compare", str(partial), "--score", "knn"])


def test_export_copies_results_without_checkpoints(data_dir, tmp_path):
    run_dir = run_main(data_dir, tmp_path / "runs", "--classes", "2", "--seeds", "0", "--epochs", "1")
    target = export(run_dir, tmp_path / "results")  # main.py --export: below the repository's results/
    assert target == tmp_path / "results" / "digits" / "cascade" / run_dir.name
    files = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert files == {"config.json", "table.md", "table.csv", "class2_seed0/config.json", "class2_seed0/results.json",
                     "class2_seed0/scores.npz"}
    assert results_of(target) == results_of(run_dir)
    with pytest.raises(UserError, match="never overwrites"):
        export(run_dir, tmp_path / "results")



def test_an_exported_run_resumes_in_runs_training_only_its_missing_trials_to_the_same_results(data_dir, tmp_path,
                                                                                               capsys):
    """results/README.md: a run exported as far as it got (its scores.npz left out, as results/
    keeps most runs) continues when its folder is copied back into runs/ and resumed: the trials
    with a results.json are kept as they are, only the others train, and they come out as the
    uninterrupted run's, bit for bit."""
    whole = run_main(data_dir, tmp_path / "runs", "--classes", "2", "--seeds", "0", "1", "--epochs", "1")
    exported = export(whole, tmp_path / "results")
    (exported / "class2_seed0" / "scores.npz").unlink()
    shutil.rmtree(exported / "class2_seed1")  # the trial that had not finished when it was exported
    kept = (exported / "class2_seed0" / "results.json").read_bytes()
    again = Path(shutil.copytree(exported, tmp_path / "again" / exported.name))
    capsys.readouterr()
    assert Path(main.run(["--resume", str(again)])) == again
    assert "1 trial(s) to run, 1 already finished" in capsys.readouterr().out
    assert (again / "class2_seed0" / "results.json").read_bytes() == kept
    assert not (again / "class2_seed0" / "scores.npz").exists()

    def computed(trial):  # what a trial computes (its timings are the machine's)
        results, (targets, scores) = read_results(trial), read_scores(trial)
        return ({key: results[key] for key in ("metrics", "validation_stats", "best_epoch", "model_sha256")},
                targets.tolist(), {name: values.tolist() for name, values in scores.items()})

    assert computed(again / "class2_seed1") == computed(whole / "class2_seed1")
    finished = export(again, tmp_path / "results2")  # and exported again, as it now stands: both trials
    assert files_in(finished / "class2_seed0") == ["config.json", "results.json"]
    assert files_in(finished / "class2_seed1") == ["config.json", "results.json", "scores.npz"]


def test_export_leaves_out_a_trial_that_has_not_finished(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path / "runs")
    running = run_dir / "class9_seed0"
    running.mkdir()
    shutil.copy(run_dir / "class0_seed0" / "config.json", running / "config.json")  # what a trial writes first
    (running / "last.pt").write_bytes(b"checkpoint")
    shutil.copy(run_dir / "class0_seed0" / "scores.npz", running / "scores.npz")  # killed before results.json
    target = export(run_dir, tmp_path / "results")
    assert not (target / "class9_seed0").exists() and (target / "class0_seed0" / "results.json").is_file()
    assert results_of(target) == results_of(finished_run)


def test_export_copies_the_files_as_they_are_and_refuses_a_damaged_scores_npz(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path / "runs")
    npz = run_dir / "class0_seed0" / "scores.npz"
    target = export(run_dir, tmp_path / "results")
    assert (target / "class0_seed0" / "scores.npz").read_bytes() == npz.read_bytes()
    assert results_of(target) == results_of(finished_run)
    npz.write_bytes(npz.read_bytes()[:200])
    with pytest.raises(UserError, match="holds no readable test scores"):
        export(run_dir, tmp_path / "results2")
    assert not (tmp_path / "results2").exists()  # checked before anything is written


def test_export_of_a_run_on_a_tuning_split_lands_under_tuning(finished_run, tmp_path, monkeypatch):
    run_dir = copy_run(finished_run, tmp_path / "runs")
    config = json.loads((run_dir / "config.json").read_text())
    config["config"]["dataset"] = "digits-tune"
    (run_dir / "config.json").write_text(json.dumps(config))
    for path in run_dir.glob("class*_seed*/config.json"):  # a trial's settings are its run's
        trial = json.loads(path.read_text())
        trial["config"]["dataset"] = "digits-tune"
        path.write_text(json.dumps(trial))
    target = export(run_dir, tmp_path / "results")
    assert target == tmp_path / "results" / "tuning" / "digits-tune" / "cascade" / run_dir.name
    assert results_of(target) == results_of(run_dir)
    shutil.rmtree(target)
    monkeypatch.chdir(run_dir)
    assert export(".", tmp_path / "results") == target  # named by the run folder's own name


@pytest.mark.parametrize("key, value", [("dataset", "../../escaped"), ("model", "/tmp/escaped"), ("dataset", ".."),
                                        ("model", "m" * 300)])
def test_a_forged_dataset_or_model_name_cannot_lead_an_export_outside_results(finished_run, tmp_path, key, value):
    run_dir = copy_run(finished_run, tmp_path / "runs")
    config = json.loads((run_dir / "config.json").read_text())
    config["config"][key] = value
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="plain folder name"):
        export(run_dir, tmp_path / "deep" / "results")
    assert not (tmp_path / "deep").exists() and not Path("/tmp/escaped").exists()


def test_export_of_a_run_with_a_bad_results_json_writes_nothing_then_works_once_repaired(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path / "runs")
    results = run_dir / "class0_seed0" / "results.json"
    good = results.read_text()
    results.write_text(good[:100])
    with pytest.raises(UserError, match="results.json is truncated or corrupt"):
        export(run_dir, tmp_path / "results")
    assert files_in(tmp_path / "results") == []  # no target, no staging folder, not even results/digits/
    results.write_text(good)
    target = export(run_dir, tmp_path / "results")
    assert results_of(target) == results_of(run_dir) and leftovers(tmp_path) == []


def test_export_on_a_full_disk_is_one_error_and_leaves_nothing(finished_run, tmp_path):
    target = tmp_path / "results" / "digits" / "cascade" / finished_run.name
    with faults.full_disk(tmp_path), pytest.raises(UserError) as error:
        export(finished_run, tmp_path / "results")
    assert str(error.value) == (f"cannot export to {target} (no space left on the device): free some space or "
                                f"choose another folder; nothing was written there.")
    assert not target.exists() and leftovers(tmp_path) == []


def test_score_all_prints_a_table_per_score_and_writes_nothing(finished_run, capsys):
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    tables = report.run_table(finished_run, write=False, score="all")
    titles = [line for line in capsys.readouterr().out.splitlines() if line.startswith("digits / cascade")]
    assert [t.split("score ")[1].split(":")[0] for t in titles] == ["recon", "latent-knn", "latent-lof", "memory",
                                                                    "fused", "fused-lof"]
    assert len(tables) == 6 and tables[0][1] != tables[4][1]  # each score's own rows
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == before


def test_an_older_run_is_migrated_once_and_then_reads_like_a_new_one(finished_run, tmp_path):
    """scripts/migrate_runs.py: a setting renamed since, settings added since (with the value runs
    had before them), a history of epochs, the one-score results of the first versions; then every
    reader takes the folder, and --resume with today's settings finds it the same."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import migrate_runs

    old = copy_run(finished_run, tmp_path / "a")
    saved = json.loads((old / "config.json").read_text())
    config = saved["config"]
    config["threshold"] = config.pop("addressing_threshold")
    for key in ("min_steps", "ssl", "ssl_weight", "ssl_temperature"):
        config.pop(key)
    config["classical"] = {"knn": "a description"}
    (old / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match="earlier version of this code. Run python scripts/migrate_runs.py"):
        main.run(["--resume", str(old)])
    results = old / "class0_seed0" / "results.json"
    trial = json.loads(results.read_text())
    columns = {k: v for k, v in trial["history"].items() if k != "memory"}
    trial["history"] = [dict(zip(columns, row)) for row in zip(*columns.values())]  # the older layout: epochs
    results.write_text(json.dumps(trial))
    with pytest.raises(UserError, match="history"):
        main.run(["--table", str(old)])
    assert migrate_runs.migrate(tmp_path) == 2 and migrate_runs.migrate(tmp_path) == 0  # once: the two edited files
    migrated = json.loads((old / "config.json").read_text())["config"]
    assert migrated["addressing_threshold"] == 0.0 and migrated["min_steps"] == 0 and migrated["ssl"] is None
    assert "classical" not in migrated and "threshold" not in migrated
    again, before = results_of(old)["class0_seed0"], results_of(finished_run)["class0_seed0"]
    assert again["history"] == {k: v for k, v in before["history"].items() if k != "memory"}
    assert {k: v for k, v in again.items() if k != "history"} == {k: v for k, v in before.items() if k != "history"}
    first = {"class": 0, "seed": 0, "model": "knn", "metrics": {"auroc": 0.5, "auprc": 0.5, "f1_oracle": 0.5,
             "f1_val_threshold": 0.5}, "scores": [1, 2], "targets": [0, 1],
             "threshold": {"value": 1.0, "percentile_of_validation_scores": 95.0}}
    moved = migrate_runs.migrate_results(first)
    assert moved["metrics"] == {"knn": first["metrics"]} and moved["thresholds"] == {"knn": 1.0}
    assert moved["threshold_percentile"] == 95.0 and "scores" not in moved and moved["validation_stats"] == {}


@pytest.mark.parametrize("action", ["--table", "--eval-only", "--compare"])
def test_a_score_that_does_not_exist_is_refused_by_the_table_actions(finished_run, action):
    with pytest.raises(UserError, match="--score \\(SCORE\\) 'bogus' is not a score: valid are best, recon, .*, all"):
        main.run([action, str(finished_run), "--score", "bogus"])


def test_the_published_figures_stand_beside_a_run_only_when_it_covers_every_class(finished_run, tmp_path, capsys,
                                                                                    monkeypatch):
    """A one-class run's mean printed above the paper's 10-class mean misled (issue 31): the
    published rows come with a run of every class only."""
    monkeypatch.setitem(report.PUBLISHED, "digits", {"Some method (published)": {"auroc": 99.0}})
    run_dir = copy_run(finished_run, tmp_path)  # class 0 only
    report.run_table(run_dir, write=False)
    assert "Some method (published)" not in capsys.readouterr().out
    saved = json.loads((run_dir / "config.json").read_text())
    saved["config"]["classes"] = None  # the same run planned over every class
    (run_dir / "config.json").write_text(json.dumps(saved))
    report.run_table(run_dir, write=False)
    assert "Some method (published)" in capsys.readouterr().out


def test_a_table_wraps_its_long_row_labels_to_fit_the_terminal(monkeypatch):
    """--compare's row labels name every setting that differs; in a terminal narrower than the
    table they wrap between words (never inside a hyphenated name), and the table fits."""
    label = "cascade-released n_slots=50 1000 top_k=15 5 forget_rate=0.1 0.5 epochs=40 precision=bf16 [fused-lof]"
    rows = [[label, "73.95 ± 0.32", "3"], ["knn [knn]", "73.08 ± 0.04", "3"]]
    monkeypatch.setenv("COLUMNS", "70")
    lines = str(report.render_table(["model (settings that differ)", "AUROC", "seeds"], rows)).splitlines()
    assert max(map(len, lines)) <= 70 and len(lines) > 6
    assert "cascade-released" in lines[3] and " ".join(line.split("|")[1].strip() for line in lines[3:-2]) == label
    monkeypatch.setenv("COLUMNS", "200")
    assert len(str(report.render_table(["model", "AUROC", "seeds"], rows)).splitlines()) == 6  # one line a row
