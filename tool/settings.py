"""Settings: checked and printed. Every setting, from main.py's constants, a config file or a
flag (tool/flags.py), is checked by `validate` against RULES, the one place each is checked: a
value of the wrong type or outside its range is an error that names the setting.
"""
import math
import os

import torch

from tool.errors import UserError, shown
from tool.train import STEP_RULE_BATCHES, batches_per_epoch, step_rule_epochs

LIST_TYPES = {  # settings whose default may be empty or None: their element type
    "classes": str, "seeds": int, "n_slots": int, "top_k": int, "forget_rate": float, "channels": int,
}
SCALAR_TYPES = {"memae_shrink_threshold": float, "data_dir": str, "ssl": str}  # settings whose default is None
OPTIONAL = {"classes", "memae_shrink_threshold", "data_dir", "ssl"}  # None is a valid value ("none" on the CLI)


def _finite(value):
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an integer beyond float's range
        return False


def _in(low, high, low_open=False, high_open=False):
    """A check: a finite number between low and high (None = unbounded), ends open or closed."""
    def check(v):
        return (_finite(v) and (low is None or (v > low if low_open else v >= low))
                and (high is None or (v < high if high_open else v <= high)))
    return check


def _int_in(low, high=None):
    """A check: an integer (not a bool, not a float) in low..high (None = unbounded)."""
    def check(v):
        return type(v) is int and v >= low and (high is None or v <= high)
    return check


def _each(check, allow_empty=True):
    return lambda values: isinstance(values, list) and (allow_empty or values) and all(check(v) for v in values)


def _folder(optional):
    return lambda v: (optional and v is None) or (isinstance(v, str) and v.strip() != "" and "\0" not in v)


BOOLEAN = (lambda v: isinstance(v, bool), "true or false")
SEED_LIMIT = 2 ** 32  # numpy's seeds are 32-bit
THREAD_LIMIT = 1024  # torch.set_num_threads crashes the process far above any machine's core count
RULES = {  # setting: (check, the rule in words). Every numeric setting is checked here, and only here
    # (tests/test_settings.py checks that every setting of main.py with a number in it has a rule).
    "seeds": (lambda v: _each(_int_in(0, SEED_LIMIT - 1), allow_empty=False)(v) and len(set(v)) == len(v),
              f"one or more distinct integers in 0..{SEED_LIMIT - 1}"),
    "n_slots": (_each(_int_in(1)), "positive integers, one per memory stage"),
    "top_k": (_each(_int_in(1)), "positive integers, one per memory stage"),
    "forget_rate": (_each(_in(0, 1, high_open=True)), "numbers in [0, 1), one per memory stage"),
    "addressing_threshold": (_in(-1, 1), "a number in [-1, 1] (it is compared with cosine similarities)"),
    "latent_dim": (_int_in(1), "an integer >= 1"),
    "channels": (_each(_int_in(1), allow_empty=False), "one or more positive integers"),
    "memae_slots": (_int_in(1), "an integer >= 1"),
    "memae_shrink_threshold": (lambda v: v is None or _in(0, 1, high_open=True)(v), "none or a number in [0, 1)"),
    "memae_entropy_weight": (_in(0, None), "a finite number >= 0"),
    "kl_weight": (_in(0, None), "a finite number >= 0"),
    "ssl_weight": (_in(0, None, low_open=True), "a finite number > 0"),
    "ssl_temperature": (_in(0, None, low_open=True), "a finite number > 0"),
    "epochs": (_int_in(1), "an integer >= 1"),
    "patience": (_int_in(1), "an integer >= 1"),
    "patience_steps": (_int_in(0), "an integer >= 0"),
    "min_steps": (_int_in(0), "an integer >= 0"),
    "checkpoint_seconds": (_in(0, None), "a finite number >= 0"),
    "batch_size": (_int_in(2), "an integer >= 2"),
    "lr": (_in(0, None, low_open=True), "a finite number > 0"),
    "weight_decay": (_in(0, None), "a finite number >= 0"),
    "val_fraction": (_in(0, 1, low_open=True, high_open=True), "in (0, 1)"),
    "threshold_percentile": (_in(0, 100, low_open=True, high_open=True), "in (0, 100)"),
    "jobs": (_int_in(0, THREAD_LIMIT), f"an integer in 0..{THREAD_LIMIT} (0 = auto)"),
    "threads": (_int_in(0, THREAD_LIMIT), f"an integer in 0..{THREAD_LIMIT} (0 = the cores split between the jobs)"),
    "output_dir": (_folder(optional=False), "a folder (not empty) with no null byte in its name"),
    "data_dir": (_folder(optional=True), "a folder (not empty), or none for datasets/; no null byte in its name"),
    "precision": (lambda v: v in ("fp32", "bf16"), "fp32 or bf16"),
    "draw_figures": BOOLEAN,
    "compile": BOOLEAN,
    "ssl_in_validation": BOOLEAN,
    "ssl_augment": BOOLEAN,
}


def validate(config):
    """Check every setting of a sweep that can be checked without the data; a UserError names the
    first one that is wrong and says what it may be."""
    from models import AUGMENTED_KINDS, PRESETS, SSL_KINDS
    from tool.classical import CLASSICAL
    from tool.data.datasets import check_dataset_name
    from tool.data.protocol import PROTOCOLS

    check_dataset_name(config["dataset"], config["data_dir"])
    if config["protocol"] not in PROTOCOLS:
        raise UserError(f"unknown protocol {shown(config['protocol'])}. Valid: {', '.join(PROTOCOLS)}")
    if config["model"] not in PRESETS and config["model"] not in CLASSICAL:
        raise UserError(f"unknown model preset {shown(config['model'])}. Valid: {', '.join([*PRESETS, *CLASSICAL])}")
    if config["ssl"] is not None and config["ssl"] not in SSL_KINDS:
        raise UserError(f"unknown self-supervised task --ssl (SSL) {shown(config['ssl'])}. Valid: none (SSL = None in a config file), {', '.join(SSL_KINDS)}")
    if config["ssl"] is not None and config["model"] in CLASSICAL:
        raise UserError(f"--ssl trains a network's encoder; {config['model']} is a classical detector: drop --ssl")
    if config.get("ssl_augment") is True and config["ssl"] not in AUGMENTED_KINDS:
        raise UserError(f"--ssl-augment (SSL_AUGMENT) makes the copies of a transformation task from random views; "
                        f"--ssl is {shown(config['ssl']) if config['ssl'] else 'none'}: give --ssl "
                        f"{' or '.join(AUGMENTED_KINDS)}, or drop --ssl-augment")
    if config["classes"] is not None and not config["classes"]:
        raise UserError("--classes needs at least one class (or 'none' for all)")
    check_ranges(config)
    check_score(config["score"])
    resolve_device(config["device"])
    check_model_size(config, (1, 28, 28), against_memory=False)  # the memory's settings together (lengths, top_k vs slots)


def check_score(score, allow_all=False):
    """SCORE is a score's name (or, for the table actions, "all": every score)."""
    from tool.classical import CLASSICAL
    from tool.scores import FUSIONS, SCORES

    if score not in (*SCORES, *FUSIONS, *CLASSICAL, "best") and not (allow_all and score == "all"):
        raise UserError(f"--score (SCORE) {shown(score)} is not a score: valid are best, {', '.join([*SCORES, *FUSIONS])}"
                        f"{', all' if allow_all else ''} (a classical detector shows its own: {', '.join(CLASSICAL)})")


MODEL_MEMORY_SHARE = 0.5  # a model whose training state needs more than this share of the machine's memory is refused


def check_model_size(config, shape, against_memory=True):
    """Build the model for images of `shape` on the meta device (no memory is allocated): its
    settings must fit together, and (against_memory) a training step must fit in MODEL_MEMORY_SHARE
    of this machine's memory: the weights, gradients and Adam's two moments (16 bytes a parameter)
    and the activations of a batch (training_floats)."""
    from models import PRESETS, ModelConfig, build_model

    if config["model"] not in PRESETS:
        return
    try:
        with torch.device("meta"):
            model = build_model(config["model"], tuple(shape), ModelConfig.from_settings(config))
    except ValueError as error:
        raise UserError(str(error)) from None
    memory = machine_memory() if against_memory else None
    if not memory:
        return
    n = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    need = 16 * n + 4 * ACTIVATION_COPIES * config["batch_size"] * training_floats(model, shape, config)
    if need > MODEL_MEMORY_SHARE * memory:
        raise UserError(f"a training step of the {config['model']} model on {' x '.join(map(str, shape))} images "
                        f"would need about {need / 2**30:.1f} GiB ({n:,} parameters, batches of "
                        f"{config['batch_size']}), more than this machine's memory allows ({memory / 2**30:.1f} "
                        f"GiB): lower --channels, --latent-dim, --n-slots, --memae-slots or --batch-size.")


ACTIVATION_COPIES = 1.5  # float32 copies a training step keeps of each layer output (1.45 measured: cascade, 3 x 128 x 128, batch 64)


def training_floats(model, shape, config):
    """Floats the encoder and the decoder output per image in a training step (their layers'
    outputs, on the meta device; the encoder once per copy the self-supervised task makes)."""
    counted = [0]

    def count(module, inputs, output):
        counted[0] += output.numel() if isinstance(output, torch.Tensor) else 0

    leaves = [m for part in (model.encoder, model.decoder) for m in part.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.device("meta"):
            model.encoder(torch.empty(2, *shape))  # 2: BatchNorm takes no batch of one in training
            ssl = getattr(model, "ssl", None)
            counted[0] *= 1 if ssl is None else ssl.training_copies
            model.decoder(torch.empty(2, config["latent_dim"]))
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return 0  # a backbone that cannot run on the meta device: its parameters alone are checked
    finally:
        for hook in hooks:
            hook.remove()
    return counted[0] // 2


def machine_memory():
    """Bytes of physical memory (None when the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


INT_LIMIT = 2 ** 31  # no integer setting (epochs, steps, sizes, seeds' count ...) means anything above this


def check_ranges(config, keys=None):
    """Check `keys` of `config` (default: every setting with a rule) against RULES, and that no
    integer anywhere in them is beyond INT_LIMIT; a UserError names the first setting out of range."""
    for key, value in config.items():
        values = value if isinstance(value, list) else [value]
        if key != "seeds" and any(type(v) is int and abs(v) > INT_LIMIT for v in values):
            raise UserError(f"--{key.replace('_', '-')} ({key.upper()}) must be at most {INT_LIMIT}, got "
                            f"{shown(value)}")
    for key in RULES if keys is None else keys:
        if key in config:
            check, rule = RULES[key]
            if not check(config[key]):
                raise UserError(f"--{key.replace('_', '-')} ({key.upper()}) must be {rule}, got {shown(config[key])}")


def resolve_device(name):
    """'auto' = CUDA, then Apple MPS, then CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'. Valid: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}' asked for, but CUDA is not available here. Use --device cpu or auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device '{name}' asked for, but only {torch.cuda.device_count()} CUDA device(s) exist.")
    elif device.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise UserError(f"device '{name}' asked for, but Apple MPS is not available here. Use --device cpu or auto.")
    elif device.type != "cpu":
        raise UserError(f"unsupported device '{name}'. Valid: auto, cpu, cuda, cuda:N, mps")
    return str(device)


def describe(config, defaults):
    """The settings that differ from main.py's, one a line (every setting is in the run's config.json)."""
    changed = {k: v for k, v in config.items() if k in defaults and _normal(v) != _normal(defaults[k])}
    if not changed:
        return "settings: main.py's defaults (every setting is in the run's config.json)"
    width = max(len(k) for k in changed)
    return "\n".join(["settings that differ from main.py's (every setting is in the run's config.json):",
                      *(f"  {k:<{width}} = {shown(v, 200)}   (main.py: {defaults[k]!r})" for k, v in changed.items())])


def epochs_note(config, n_train):
    """Why a trial on `n_train` training images trains longer than EPOCHS, in words, or None."""
    steps = batches_per_epoch(n_train, config["batch_size"])
    needed = step_rule_epochs(config["min_steps"], steps)
    if needed <= config["epochs"]:
        return None
    counted = f" (counted as {STEP_RULE_BATCHES})" if steps < STEP_RULE_BATCHES else ""
    return (f"{steps} optimiser step(s) an epoch{counted} on {n_train} training images: MIN_STEPS "
            f"{config['min_steps']} -> at least {needed} epochs, more than EPOCHS {config['epochs']} "
            f"(--min-steps 0: EPOCHS epochs exactly)")


def _normal(value):
    return list(value) if isinstance(value, tuple) else value
