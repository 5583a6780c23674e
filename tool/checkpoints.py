"""What a trial keeps to be scored again, and how it is read back: best.pt (the weights), bank.pt
(the normal training features the neighbour scores compare with), both checked against the
trial's config.json and results.json before anything is allocated or scored."""
import re
from pathlib import Path

from models import ModelConfig, build_model
from tool.errors import UserError
from tool.io import atomic_torch_save, file_sha256, load_checkpoint, read_json
from tool.runs import MIGRATE
from tool.settings import check_model_size, check_ranges


def write_checkpoint(folder, model, preset, input_shape, best_epoch):
    """best.pt: the weights with the lowest validation loss (load_trial_model reads them back)."""
    atomic_torch_save({"model": model.state_dict(), "preset": preset, "input_shape": list(input_shape),
                       "best_epoch": best_epoch}, Path(folder) / "best.pt")


def write_scoring(folder, scorer):
    """bank.pt: the banks of normal training features a trial's scorer compares new images with
    (score.py, the detector), and the sha256 of the best.pt they were computed with, so that a bank
    is never used beside weights it does not belong to."""
    atomic_torch_save({"banks": scorer.state()["banks"], "model_sha256": file_sha256(Path(folder) / "best.pt")},
                      Path(folder) / "bank.pt")


def load_scorer(folder, model, results):
    """The scorer of a finished trial: its bank.pt and the statistics and thresholds of its
    results.json; a bank.pt missing, damaged or of other weights is a UserError saying what to do."""
    from tool.scores import Scorer

    path = Path(folder) / "bank.pt"
    again = f"Score the trial again: python main.py --eval-only {Path(folder).parent}"
    saved = load_checkpoint(path, "cpu", again + ".") if path.is_file() else {"banks": {}, "model_sha256": None}
    if path.is_file() and (not isinstance(saved, dict) or saved.get("model_sha256") != file_sha256(Path(folder) / "best.pt")):
        raise UserError(f"{path} does not belong to the weights in {Path(folder) / 'best.pt'} (copied from another "
                        f"trial, or written before they were). {again}.")
    if results.get("model_sha256") not in (None, file_sha256(Path(folder) / "best.pt")):  # None: written before
        raise UserError(f"{Path(folder) / 'results.json'} holds the thresholds of other weights than "
                        f"{Path(folder) / 'best.pt'} (copied from another trial?). {again}.")
    try:
        return Scorer.from_state(model, {"banks": saved.get("banks"), "validation_stats": results.get("validation_stats", {}),
                                         "thresholds": results["thresholds"],
                                         "percentile": results["threshold_percentile"]})
    except ValueError as error:
        raise UserError(f"{path}: {error}. {again}.") from None


def load_trial_model(folder, device, dataset=None):
    """(trial config, model in eval mode) from a trial folder's config.json and best.pt; `dataset`
    (its name and image shape), when given, must be the one the trial was trained on."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "best.pt").is_file():
        raise UserError(f"{folder} is not a trained trial folder (needs config.json and best.pt).")
    again = "Train the trial again."
    trial = read_json(folder / "config.json", again)
    shape = trial.get("input_shape") if isinstance(trial, dict) else None
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(n) is int and 1 <= n <= 65536 for n in shape)):
        raise UserError(f"{folder / 'config.json'}: its input_shape is not three sizes (channels, height, width). {again}")
    if not all(type(trial.get(key)) is int and trial[key] >= 0 for key in ("class", "seed")) \
            or not isinstance(trial.get("config"), dict):
        raise UserError(f"{folder / 'config.json'}: its class, seed or settings are missing or garbled. {again}")
    named = re.fullmatch(r"class(\d+)_seed(\d+)", folder.name)
    if named and (int(named[1]), int(named[2])) != (trial["class"], trial["seed"]):
        raise UserError(f"{folder / 'config.json'} is the config of class {trial['class']}, seed {trial['seed']}, "
                        f"in the folder of {folder.name}: copied from another trial or edited. {again}")
    if dataset is not None and tuple(shape) != tuple(dataset[1]):
        raise UserError(f"{folder}: its model takes {tuple(shape)} images, but the dataset {dataset[0]} holds "
                        f"{tuple(dataset[1])}: the trial belongs to another run, or the dataset was prepared again "
                        f"with other settings.")
    try:  # before any memory is allocated: a forged size must not take the machine's memory
        check_ranges(trial["config"])
        check_model_size(trial["config"], shape)
    except UserError as error:
        raise UserError(f"{folder / 'config.json'}: {error}") from None
    except (KeyError, TypeError) as error:
        raise UserError(f"{folder / 'config.json'} holds no trial settings ({type(error).__name__}). {again}") from None
    checkpoint = load_checkpoint(folder / "best.pt", device, again)
    try:
        model = build_model(trial["config"]["model"], trial["input_shape"], ModelConfig.from_settings(trial["config"]))
        model.load_state_dict(checkpoint["model"])
    except KeyError as error:
        raise UserError(f"{folder / 'config.json'} lacks the setting {error}: it was written by an earlier version of "
                        f"this code. Run {MIGRATE} {folder.parent.parent} once.") from None
    except (ValueError, TypeError, RuntimeError, AttributeError) as error:
        raise UserError(f"{folder}: its config.json and best.pt do not make a model ({type(error).__name__}). "
                        f"{again}") from None
    return trial, model.to(device).eval()
