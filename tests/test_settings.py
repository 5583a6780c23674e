"""Tests of tool/settings.py: every bad setting is one clear message, before anything starts."""
import pytest
import torch

import main
from conftest import command, one_error, run_main
from tool.errors import UserError
from tool.io import REPO
from tool.settings import LIST_TYPES, RULES, SCALAR_TYPES, check_ranges


@pytest.mark.parametrize("args, message", [
    (["--no-such-setting", "1"], "unrecognized arguments: --no-such-setting"),
    (["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--model", "nope"], "unknown model preset 'nope'. Valid: cascade"),
    (["--protocol", "nope"], "unknown protocol 'nope'"),
    (["--classes", "10"], "class 10 is outside digits's classes: valid are 0..9"),
    (["--seeds", "-1"], "--seeds (SEEDS) must be one or more distinct integers in 0..4294967295"),
    (["--seeds", "1", "1"], "--seeds (SEEDS) must be one or more distinct"),
    (["--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "device 'cuda"),
    (["--top-k", "15"], "must list one value per memory stage"),
    (["--top-k", "15", "600"], "top_k=600 needs"),
    (["--epochs", "0"], "--epochs (EPOCHS) must be an integer >= 1"),
    # issue 12: each of these was accepted (or crashed) before it was refused up front
    (["--seeds", "4294967296"], "--seeds (SEEDS) must be one or more distinct integers in 0..4294967295, got "
                                "[4294967296]"),
    (["--addressing-threshold", "nan"], "--addressing-threshold (ADDRESSING_THRESHOLD) must be a number in [-1, 1]"),
    (["--addressing-threshold", "inf"], "--addressing-threshold (ADDRESSING_THRESHOLD) must be a number in [-1, 1]"),
    (["--threshold", "0.1"], "--threshold is now --addressing-threshold: it is the memory's addressing threshold; "
                             "the decision threshold is --threshold-percentile"),
    (["--kl-weight", "-1"], "--kl-weight (KL_WEIGHT) must be a finite number >= 0, got -1.0"),
    (["--kl-weight", "nan"], "--kl-weight (KL_WEIGHT) must be a finite number >= 0, got nan"),
    (["--memae-entropy-weight", "-5"], "--memae-entropy-weight (MEMAE_ENTROPY_WEIGHT) must be a finite number >= 0"),
    (["--output-dir", ""], "--output-dir (OUTPUT_DIR) must be a folder (not empty)"),
    (["--data-dir", ""], "--data-dir (DATA_DIR) must be a folder (not empty), or none"),
    (["--dataset", "../datasets/digits"], "--dataset '../datasets/digits' is not a dataset name but a path"),
    (["--dataset", "a" * 300], "an empty name or one over 100 characters"),
    (["--threads", "100000"], "--threads (THREADS) must be an integer in 0..1024"),
    (["--score", "nope"], "--score (SCORE) 'nope' is not a score: valid are best, recon"),
    (["--latent-dim", "1000000000"], "a training step of the cascade model on 1 x 8 x 8 images would need about"),
    (["--val-fraction", "0.999"], "--val-fraction (VAL_FRACTION) 0.999 holds out"),
    (["--ssl-augment"], "--ssl-augment (SSL_AUGMENT) makes the copies of a transformation task from random views; "
                        "--ssl is none: give --ssl transforms or transforms-flips"),
    (["--ssl", "contrastive", "--ssl-augment", "true"], "--ssl is 'contrastive': give --ssl transforms"),
    (["--ssl-augment", "maybe"], "--ssl-augment takes no value (or true / false): got 'maybe'"),
])
def test_bad_settings_get_one_clear_message(data_dir, tmp_path, args, message):
    with pytest.raises(UserError, match=None) as error:
        run_main(data_dir, tmp_path, *args)
    assert message in str(error.value)
    assert not (tmp_path / "digits").exists()  # nothing started
    assert not (REPO / "digits").exists()  # an empty OUTPUT_DIR would have meant the repository's folder


def test_every_numeric_setting_has_a_rule():
    """RULES (tool/settings.py) is the one place numeric settings are checked: none may escape it."""
    def numeric(value):
        items = value if isinstance(value, (list, tuple)) else [value]
        return any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)

    numeric_settings = {key for key, value in main.DEFAULTS.items() if numeric(value)} | set(LIST_TYPES) - {"classes"}
    numeric_settings |= {key for key, kind in SCALAR_TYPES.items() if kind in (int, float)}
    assert numeric_settings - set(RULES) == set()
    for key, (check, _) in RULES.items():  # each rule accepts main.py's default
        assert check(main.DEFAULTS[key]), key


@pytest.mark.parametrize("key, value", [("epochs", 2.5), ("seeds", [True]), ("batch_size", "256"), ("top_k", [15.0, 5]),
                                        ("lr", float("inf")), ("draw_figures", "yes"), ("jobs", -1)])
def test_a_run_config_with_a_wrong_type_is_refused(key, value):
    """--resume reads settings from a run's config.json: types are checked too, not only ranges."""
    with pytest.raises(UserError, match=f"--{key.replace('_', '-')} \\({key.upper()}\\) must be"):
        check_ranges({**main.DEFAULTS, key: value})


@pytest.mark.parametrize("script", ["main.py", "preprocess.py", "score.py", "scripts/ablate_scores.py",
                                    "scripts/epoch_oracle.py"])
def test_every_command_line_error_is_one_line(script):
    """A flag argparse rejects is one 'error: ...' line naming the script's --help, no usage dump."""
    one_error(command(script, "--no-such-flag"), f"python {script} --help")


def test_epochs_note_says_why_a_small_dataset_trains_longer_than_epochs():
    """The sweep's first lines say when MIN_STEPS raises EPOCHS, and by how much: digits (4 batches
    an epoch) 500 epochs; a folder of 144 training images (1 batch) the same 500, counted as 4
    steps an epoch; Fashion-MNIST (190 batches) nothing."""
    from tool.settings import epochs_note

    config = {**main.DEFAULTS, "epochs": 100, "min_steps": 2000, "batch_size": 256}
    assert epochs_note(config, 1020).startswith("4 optimiser step(s) an epoch on 1020 training images: MIN_STEPS "
                                                "2000 -> at least 500 epochs, more than EPOCHS 100")
    assert "1 optimiser step(s) an epoch (counted as 4) on 144 training images" in epochs_note(config, 144)
    assert "at least 500 epochs" in epochs_note(config, 144)
    assert epochs_note(config, 48600) is None
    assert epochs_note({**config, "min_steps": 0}, 144) is None
