"""The fourth hostile pass's defects, each with the test that failed before its fix: a FIFO that
hung --export, zip bombs in checkpoints and score files, last.pt and config.json of another trial
or dataset taken without a word, figures of two protocols written over each other, the MLP presets
with a self-supervised task, and tracebacks where one error line belongs."""
import errno
import json
import os
import zipfile

import numpy as np
import pytest
import torch

from conftest import command, copy_run, one_error
from tool.errors import UserError


def _deflated_zip(path, name, n_bytes, header=b""):
    """A zip at `path` whose one deflated entry unpacks to `header` + n_bytes zeros (a few KB on disk)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name, "w", force_zip64=True) as entry:
            entry.write(header)
            for _ in range(n_bytes // 2 ** 20):
                entry.write(bytes(2 ** 20))


def test_export_of_a_run_whose_scores_npz_is_a_fifo_is_one_error_not_a_hang(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / "class0_seed0" / "scores.npz").unlink()
    os.mkfifo(run / "class0_seed0" / "scores.npz")
    done = command("main.py", "--export", run, timeout=120)  # hung forever before
    one_error(done, "scores.npz")


def test_a_checkpoint_that_unpacks_to_far_more_than_its_size_is_refused_before_unpacking(tmp_path):
    from tool.io import load_checkpoint

    bomb = tmp_path / "best.pt"
    _deflated_zip(bomb, "archive/data/0", 64 * 2 ** 20)  # 64 MB of zeros in about 64 KB
    assert bomb.stat().st_size < 2 ** 20
    with pytest.raises(UserError, match="unpack to 64 MB, far more than such a file holds"):
        load_checkpoint(bomb)
    x = torch.zeros(5 * 2 ** 20 // 4)  # torch.save's own file of 5 MB still loads
    torch.save({"x": x}, tmp_path / "fine.pt")
    assert torch.equal(load_checkpoint(tmp_path / "fine.pt")["x"], x)


def test_a_scores_file_that_would_take_the_machines_memory_is_refused(finished_run, tmp_path):
    from numpy.lib import format as npy

    from tool.results import read_scores

    run = copy_run(finished_run, tmp_path)
    scores = run / "class0_seed0" / "scores.npz"
    _deflated_zip(scores, "recon.npy", 64 * 2 ** 20)  # a deflate bomb
    with pytest.raises(UserError, match="unpack to 64 MB"):
        read_scores(scores.parent)
    header = {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)}
    with zipfile.ZipFile(scores, "w") as archive:  # a header claiming 8 TB, with 80 bytes of data
        with archive.open("recon.npy", "w") as entry:
            npy.write_array_header_1_0(entry, header)
            entry.write(bytes(80))
    with pytest.raises(UserError, match="holds no readable test scores"):
        read_scores(scores.parent)
    targets, read = read_scores(copy_run(finished_run, tmp_path / "fine").joinpath("class0_seed0"))
    assert len(targets) and all(len(v) == len(targets) for v in read.values())


def test_last_pt_resumes_only_the_trial_it_was_written_for(tmp_path):
    """last.pt of class 0 copied into class 1 (other images), or of a model whose config.json was
    edited (the trial's settings), went on as if it were that trial's."""
    import main

    from models import ModelConfig, build_model
    from tool.io import atomic_torch_save
    from tool.train import TrainConfig, train_model

    x = torch.rand(40, 1, 8, 8)
    model = build_model("ae", (1, 8, 8), ModelConfig.from_settings(main.DEFAULTS))
    config = TrainConfig.from_settings({**main.DEFAULTS, "epochs": 1, "min_steps": 0, "checkpoint_seconds": 0})
    trial = {"class": 0, "settings": {"forget_rate": [0.1, 0.5], "top_k": (15, 5)}}
    train_model(model, x, x[:8], config, tmp_path / "last.pt", generator_seed=0, log=None, trial=trial)
    same = {"class": 0, "settings": {"forget_rate": [0.1, 0.5], "top_k": [15, 5]}}  # as JSON gives it back
    train_model(model, x, x[:8], config, tmp_path / "last.pt", generator_seed=0, log=None, trial=same)
    for images, other, differ in ((x + 0.01, trial, "images"), (x, {**trial, "class": 1}, "class"),
                                  (x, {**trial, "settings": {"forget_rate": [0.1, 0.9], "top_k": [15, 5]}}, "settings")):
        with pytest.raises(UserError, match=f"differ: {differ}\\)"):
            train_model(model, images, x[:8], config, tmp_path / "last.pt", generator_seed=0, log=None, trial=other)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    state = saved["state"]
    for forged in ({**state, "bad_epochs": "x"}, {k: v for k, v in state.items() if k != "bad_epochs"},
                   {**state, "seconds": "x"}, {**state, "best_model": {"a": torch.zeros(1)}}):
        atomic_torch_save({**saved, "state": forged}, tmp_path / "forged.pt")
        with pytest.raises(UserError, match="does not fit this model and settings"):
            train_model(model, x, x[:8], config, tmp_path / "forged.pt", generator_seed=0, log=None, trial=trial)


def _edit_trial_config(run, change):
    path = run / "class0_seed0" / "config.json"
    trial = json.loads(path.read_text())
    change(trial)
    path.write_text(json.dumps(trial))


def test_a_trial_config_of_another_class_or_out_of_range_is_one_error(finished_run, tmp_path):
    """--eval-only wrote class 5's metrics into class0_seed0; latent_dim -5 was a RuntimeError."""
    import main

    run = copy_run(finished_run, tmp_path / "a")
    _edit_trial_config(run, lambda t: t.update({"class": 5}))
    with pytest.raises(UserError, match="is the config of class 5, seed 0, in the folder of class0_seed0"):
        main.run(["--eval-only", str(run)])
    run = copy_run(finished_run, tmp_path / "b")
    _edit_trial_config(run, lambda t: t["config"].update({"latent_dim": -5}))
    from tool.checkpoints import load_trial_model

    with pytest.raises(UserError, match="config.json: --latent-dim"):  # score.py's reader
        load_trial_model(run / "class0_seed0", "cpu")
    with pytest.raises(UserError, match="other settings than its run \\(latent_dim differ\\)"):
        main.run(["--eval-only", str(run)])


def test_a_dataset_prepared_again_with_other_images_is_not_mixed_into_a_run(finished_run, tmp_path):
    import main

    run = copy_run(finished_run, tmp_path)
    trial = json.loads((run / "class0_seed0" / "config.json").read_text())
    assert len(trial["dataset_sha256"]) == 64
    _edit_trial_config(run, lambda t: t.update({"dataset_sha256": "0" * 64}))
    for action in (["--resume", str(run), "--seeds", "1"], ["--eval-only", str(run)], ["--leakage", str(run)]):
        with pytest.raises(UserError, match="was trained on other images of digits than those prepared now"):
            main.run(action)
    assert not (run / "class0_seed1").exists()


def test_the_figures_of_two_protocols_of_one_dataset_are_two_files(data_dir, tmp_path, capsys):
    import main

    out = tmp_path / "runs"
    for protocol in ("one-anomalous-class", "one-normal-class"):
        main.run(["--data-dir", str(data_dir), "--output-dir", str(out), "--model", "knn", "--classes", "0",
                  "--seeds", "0", "--jobs", "1", "--protocol", protocol, "--draw-figures", "false"])
    main.run(["--compare", str(out), "--score", "all"])
    assert {p.name for p in out.glob("comparison-*.png")} == {"comparison-digits.png",
                                                              "comparison-digits@one-normal-class.png"}


@pytest.mark.parametrize("preset, ssl", [("cascade-mlp", "transforms"), ("ae-mlp", "contrastive")])
def test_the_mlp_presets_train_and_score_with_a_self_supervised_task(preset, ssl):
    """The hidden layer's features were taken of the four rotated copies: a broadcasting error."""
    from sklearn.datasets import load_digits

    from tool.detector import CascadeMemoryDetector

    images = (load_digits().images[:200] * 255 / 16).astype("uint8")
    detector = CascadeMemoryDetector(preset=preset, ssl=ssl, epochs=1, min_steps=0, patience_steps=0,
                                     seed=0).fit(images)
    scores = detector.decision_function(images[:20])
    assert scores.shape == (20,) and np.isfinite(scores).all()


def test_a_rotation_bank_of_the_wrong_number_of_rotations_is_refused(tmp_path):
    from tool.scores import _checked_bank
    from models import ModelConfig, build_model
    import main

    model = build_model("cascade", (1, 8, 8), ModelConfig.from_settings({**main.DEFAULTS, "ssl": "transforms"}))
    width = model.encoder.latent_dim
    assert _checked_bank(torch.zeros(4, 5, width), "views", model).shape == (4, 5, width)
    with pytest.raises(ValueError, match="views bank is damaged"):
        _checked_bank(torch.zeros(1, 5, width), "views", model)


def test_a_damaged_leakage_file_is_one_error(finished_run, tmp_path):
    import main

    tree = tmp_path / "tree"
    run = copy_run(finished_run, tree)
    for text in ('{"classes": {"0": 5}}', '{"classes": {"0": {"pixels": "abc"}}}', "[1]"):
        (run / "leakage.json").write_text(text)
        with pytest.raises(UserError, match="leakage.json is corrupt"):
            main.run(["--compare", str(tree)])


def test_a_trial_of_other_images_is_refused_by_leakage_and_eval_only(finished_run):
    from tool.checkpoints import load_trial_model

    load_trial_model(finished_run / "class0_seed0", "cpu", ("digits", (1, 8, 8)))
    with pytest.raises(UserError, match="takes \\(1, 8, 8\\) images, but the dataset digits holds \\(3, 8, 8\\)"):
        load_trial_model(finished_run / "class0_seed0", "cpu", ("digits", (3, 8, 8)))


def test_a_failed_torch_compile_is_one_error():
    from tool.speed import compile_errors

    class InductorError(Exception):
        pass

    InductorError.__module__ = "torch._inductor.exc"
    with pytest.raises(UserError, match="torch.compile could not compile the model .InductorError: no g.."):
        with compile_errors(True):
            raise InductorError("no g++\nmore lines")
    with pytest.raises(InductorError):  # not compiling: not ours to explain
        with compile_errors(False):
            raise InductorError("x")


def test_write_errors_name_a_long_name_and_a_folder_in_the_way():
    from tool.io import write_reason

    assert write_reason(OSError(errno.ENAMETOOLONG, "File name too long"))[1] == "choose a shorter folder or file name"
    assert write_reason(IsADirectoryError(errno.EISDIR, "Is a directory"))[0] == "a folder stands where a file must be"


def test_names_in_a_csv_table_that_start_like_a_formula_are_text():
    from tool.report.tables import _csv_text

    assert _csv_text([["class", "name", "auroc"], [0, "=HYPERLINK(1)", "0.500000"], ["mean", "", "-1.5"]]) == \
        "class,name,auroc\r\n0,'=HYPERLINK(1),0.500000\r\nmean,,-1.5\r\n"


# ---------------------------------------------------------------------------------------------
# The fifth pass, on the tree with the fixes above
# ---------------------------------------------------------------------------------------------
def test_preparing_a_dataset_never_replaces_a_processed_folder_holding_other_files(tmp_path):
    """--path DATA_DIR/NAME/processed: its images were deleted when the dataset replaced the folder."""
    import cv2

    images = tmp_path / "d" / "mine" / "processed"
    for kind in ("a", "b"):
        (images / kind).mkdir(parents=True)
        for i in range(20):
            assert cv2.imwrite(str(images / kind / f"{i}.png"), np.full((8, 8, 3), 40 * i % 255, np.uint8))
    done = command("preprocess.py", "--dataset", "folder", "--path", images, "--name", "mine",
                   "--data-dir", tmp_path / "d")
    one_error(done, "holds what is not a prepared dataset (a, b)", "must not lie inside it")
    assert len(list(images.rglob("*.png"))) == 40


def test_scores_of_another_length_than_the_trials_test_images_are_refused_before_loading(finished_run, tmp_path):
    from tool.results import read_results, read_scores

    run = copy_run(finished_run, tmp_path)
    trial = run / "class0_seed0"
    n = sum(read_results(trial)["counts"]["test"])
    with np.load(trial / "scores.npz") as data:
        arrays = {name: data[name] for name in data.files}
    np.savez_compressed(trial / "scores.npz", **{**arrays, "recon": np.zeros(8 * 10 ** 6, np.uint8)})
    assert (trial / "scores.npz").stat().st_size < 2 ** 20 and n < 10 ** 4
    with pytest.raises(UserError, match="holds no readable test scores"):
        read_scores(trial)


def test_a_trial_made_with_other_settings_is_not_mixed_into_a_run(finished_run, tmp_path):
    import main

    run = copy_run(finished_run, tmp_path / "a")
    _edit_trial_config(run, lambda t: t["config"].update({"protocol": "one-normal-class"}))
    for action in (["--table", str(run)], ["--eval-only", str(run)], ["--compare", str(run.parent)]):
        with pytest.raises(UserError, match="was made with other settings than its run \\(protocol differ\\)"):
            main.run(action)


def test_a_dataset_of_other_images_is_refused_for_old_trials_too_and_the_run_config_is_left_alone(finished_run,
                                                                                                    tmp_path):
    import main

    run = copy_run(finished_run, tmp_path)
    _edit_trial_config(run, lambda t: (t.pop("dataset_sha256"), t.update({"input_shape": [3, 8, 8]})))
    before = (run / "config.json").read_bytes()
    for action in (["--resume", str(run), "--seeds", "1"], ["--figures", str(run)]):
        with pytest.raises(UserError, match="was trained on other images of digits"):
            main.run(action)
    assert (run / "config.json").read_bytes() == before and not (run / "class0_seed1").exists()


def test_a_forged_infinite_best_loss_in_last_pt_is_refused(tmp_path):
    import main

    from models import ModelConfig, build_model
    from tool.io import atomic_torch_save
    from tool.train import TrainConfig, train_model

    x = torch.rand(40, 1, 8, 8)
    model = build_model("ae", (1, 8, 8), ModelConfig.from_settings(main.DEFAULTS))
    config = TrainConfig.from_settings({**main.DEFAULTS, "epochs": 1, "min_steps": 0, "checkpoint_seconds": 0})
    train_model(model, x, x[:8], config, tmp_path / "last.pt", generator_seed=0, log=None)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    atomic_torch_save({**saved, "state": {**saved["state"], "best_val": float("-inf")}}, tmp_path / "last.pt")
    with pytest.raises(UserError, match="does not fit this model and settings"):
        train_model(model, x, x[:8], config, tmp_path / "last.pt", generator_seed=0, log=None)


# ---------------------------------------------------------------------------------------------
# The sixth pass: security, data loss, hangs and memory bombs only
# ---------------------------------------------------------------------------------------------
def test_a_forged_protocol_cannot_name_a_file_outside_the_compared_folder(finished_run, tmp_path):
    import main

    tree = tmp_path / "tree"
    run = copy_run(finished_run, tree)
    config = json.loads((run / "config.json").read_text())
    config["config"]["protocol"] = "x/../../decoy/pwned"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="protocol \\(one of one-anomalous-class, one-normal-class\\)"):
        main.run(["--compare", str(tree)])
    assert not (tmp_path / "decoy").exists()


def test_preparing_never_replaces_a_processed_folder_another_tool_wrote(tmp_path, make_prepared):
    from tool.data.datasets import processed_dir

    name = make_prepared(tmp_path, n_train_per_class=3)
    folder = processed_dir(name, tmp_path)
    (folder / "meta.json").write_text('{"from": "torchvision"}')  # MNIST/processed of torchvision: training.pt, ...
    with pytest.raises(UserError, match="holds what is not a prepared dataset"):
        make_prepared(tmp_path, n_train_per_class=4)
    assert (folder / "meta.json").read_text() == '{"from": "torchvision"}'


def test_a_bank_expanded_to_millions_of_rows_is_refused_before_it_is_computed_on():
    import main
    from models import ModelConfig, build_model
    from tool.scores import _checked_bank

    model = build_model("cascade", (1, 8, 8), ModelConfig.from_settings(main.DEFAULTS))
    bank = torch.zeros(1, model.encoder.latent_dim).expand(4 * 10 ** 6, -1)  # 4 bytes on disk, 2 GB computed on
    with pytest.raises(ValueError, match="a trial keeps at most 16384 images"):
        _checked_bank(bank, "code", model)


def test_a_pickle_that_asks_numpy_for_an_array_it_does_not_hold_is_refused(tmp_path):
    import pickle

    from tool.data.readers import read_cifar_batches

    class Bomb:
        def __reduce__(self):
            return np.ndarray, ((10 ** 5, 3072), np.dtype("u1"))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Bomb(), "labels": [0]}))
    assert path.stat().st_size < 1000
    with pytest.raises(UserError, match="does not hold"):
        read_cifar_batches([path])
