"""Tests of tool/settings.py: every bad setting is one clear message, before anything starts."""
import pytest
import torch

from conftest import run_main
from tool.errors import UserError


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
    (["--epochs", "0"], "--epochs (EPOCHS) must be >= 1"),
])
def test_bad_settings_get_one_clear_message(data_dir, tmp_path, args, message):
    with pytest.raises(UserError, match=None) as error:
        run_main(data_dir, tmp_path, *args)
    assert message in str(error.value)
    assert not (tmp_path / "digits").exists()  # nothing started
