"""Settings: main.py's constants, overridden from the command line, checked, printed.

Every constant in main.py's settings block becomes a flag: EPOCHS -> --epochs, TOP_K -> --top-k.
The flag's type comes from the constant's default; a list default takes one value per element.
An unknown flag, a value of the wrong type, and a value outside its range (`validate`, the one
place every setting is checked) are errors that name the setting.
"""
import argparse
import math
import os

import torch

from tool.errors import UserError, shown

LIST_TYPES = {  # settings whose default may be empty or None: their element type
    "classes": str, "seeds": int, "n_slots": int, "top_k": int, "forget_rate": float, "channels": int,
}
SCALAR_TYPES = {"memae_shrink_threshold": float, "data_dir": str, "ssl": str}  # settings whose default is None
OPTIONAL = {"classes", "memae_shrink_threshold", "data_dir", "ssl"}  # None is a valid value ("none" on the CLI)


RENAMED = {  # old flag -> (new flag, why)
    "--threshold": ("--addressing-threshold", "it is the memory's addressing threshold; the decision threshold is "
                                              "--threshold-percentile"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one UserError line (exit code 2), not a usage dump."""
    def error(self, message):
        raise UserError(f"{message} (see python {self.prog} --help)")


def _none_or(kind):
    def convert(text):
        return None if text.lower() == "none" else kind(text)

    convert.__name__ = kind.__name__
    return convert


def _bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


_bool.__name__ = "bool"


GROUPS = {  # the --help sections, in main.py's order within each
    "data": ("dataset", "protocol", "classes", "seeds", "val_fraction", "data_dir"),
    "model": ("model", "n_slots", "top_k", "forget_rate", "addressing_threshold", "connector", "latent_dim",
              "channels", "memae_slots", "memae_shrink_threshold", "memae_entropy_weight", "kl_weight", "ssl",
              "ssl_weight", "ssl_temperature"),
    "training": ("epochs", "min_steps", "patience", "patience_steps", "batch_size", "lr", "weight_decay",
                 "precision", "checkpoint_seconds", "compile"),
    "scoring": ("threshold_percentile", "score"),
    "run control": ("device", "jobs", "threads", "draw_figures", "output_dir"),
}


def choices():
    """The metavar of each setting with a fixed set of values: its choices."""
    from models import PRESETS, SSL_KINDS
    from tool.classical import CLASSICAL
    from tool.data.protocol import PROTOCOLS

    return {"protocol": PROTOCOLS, "model": (*PRESETS, *CLASSICAL), "connector": ("leaky_relu", "relu"),
            "precision": ("fp32", "bf16"), "ssl": ("none", *SSL_KINDS), "device": ("auto", "cpu", "cuda", "cuda:N", "mps"),
            "score": ("best", "recon", "...")}


class _Flag(argparse.Action):
    """A boolean setting as --name / --no-name; --name VALUE (true, false, ...) is the older spelling,
    still taken."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string.startswith("--no-"):
            value = False
        elif values is None:
            value = True
        else:
            try:
                value = _bool(values)
            except ValueError:
                raise UserError(f"{option_string} takes no value (or true / false): got {values!r}") from None
        setattr(namespace, self.dest, value)


def add_setting_flags(parser, defaults, help_texts=None):
    """One flag per setting, typed from its default, in the --help group of GROUPS it belongs to."""
    grouped = {key: name for name, keys in GROUPS.items() for key in keys}
    groups = {name: parser.add_argument_group(name) for name in [*GROUPS, "other"]}
    fixed = choices()
    for key, default in defaults.items():
        flag = "--" + key.replace("_", "-")
        group = groups[grouped.get(key, "other")]
        help_text = _short((help_texts or {}).get(key, "")).replace("%", "%%")  # argparse formats help with %
        shown = "none" if default is None else " ".join(map(str, default)) if isinstance(default, list) else default
        help_text = f"{help_text} [{shown}]" if help_text else f"[{shown}]"
        metavar = "{" + ",".join(fixed[key]) + "}" if key in fixed else None
        if isinstance(default, bool):
            group.add_argument(f"--no-{flag[2:]}", dest=key, nargs=0, action=_Flag, default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS)
            group.add_argument(flag, dest=key, nargs="?", action=_Flag, default=argparse.SUPPRESS,
                               help=f"{help_text}; --no-{flag[2:]}: off", metavar="true|false")
        elif isinstance(default, (list, tuple)) or key in LIST_TYPES:
            kind = LIST_TYPES.get(key) or (type(default[0]) if default else str)
            group.add_argument(flag, dest=key, nargs="*", type=kind, default=argparse.SUPPRESS, help=help_text,
                               metavar=kind.__name__.upper())
        else:
            kind = SCALAR_TYPES.get(key) or type(default)
            if key in OPTIONAL:
                kind = _none_or(kind)
            group.add_argument(flag, dest=key, type=kind, default=argparse.SUPPRESS, help=help_text,
                               metavar=metavar or kind.__name__.upper())


def _short(comment, limit=58):
    """A constant's comment in main.py cut to its first clause (main.py keeps the whole of it)."""
    import re

    text = re.split(r"; | \((?=released|paper|MemAE|fmnist|results|README|docs|models|tool)", comment,
                    maxsplit=1)[0].strip().rstrip(".,")
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=32, width=min(120, max(80, __import__("shutil").get_terminal_size().columns)))

    def _format_usage(self, usage, actions, groups, prefix):  # the usage line names the forms, not every flag
        return f"usage: {self._prog} [CONFIG.py] [--SETTING VALUE ...] | --ACTION RUN_DIR [...]\n\n"


def make_parser(defaults, description, help_texts=None, prog="main.py"):
    parser = OneLineParser(prog=prog, description=description, allow_abbrev=False, formatter_class=_Formatter)
    add_setting_flags(parser, defaults, help_texts)
    for old, (new, why) in RENAMED.items():
        parser.add_argument(old, nargs="*", action=_Renamed, help=argparse.SUPPRESS, new=new, why=why)
    return parser


class _Renamed(argparse.Action):
    def __init__(self, *args, new, why, **kwargs):
        super().__init__(*args, **kwargs)
        self.new, self.why = new, why

    def __call__(self, parser, namespace, values, option_string=None):
        raise UserError(f"{option_string} is now {self.new}: {self.why}.")


def overrides_from(args, defaults):
    """The settings given on the command line: {key: value}."""
    given = {}
    for key in defaults:
        if hasattr(args, key):
            value = getattr(args, key)
            given[key] = list(value) if isinstance(value, list) else value
            if key in OPTIONAL and isinstance(value, list) and [str(v).lower() for v in value] == ["none"]:
                given[key] = None  # --classes none: every class
    return given


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
    return lambda v: (optional and v is None) or (isinstance(v, str) and v.strip() != "")


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
    "output_dir": (_folder(optional=False), "a folder (not empty)"),
    "data_dir": (_folder(optional=True), "a folder (not empty), or none for datasets/"),
    "precision": (lambda v: v in ("fp32", "bf16"), "fp32 or bf16"),
    "draw_figures": (lambda v: isinstance(v, bool), "true or false"),
    "compile": (lambda v: isinstance(v, bool), "true or false"),
}


def validate(config):
    """Check every setting of a sweep that can be checked without the data; a UserError names the
    first one that is wrong and says what it may be."""
    from models import PRESETS, SSL_KINDS
    from tool.classical import CLASSICAL
    from tool.data.datasets import check_dataset_name
    from tool.data.protocol import PROTOCOLS

    check_dataset_name(config["dataset"], config["data_dir"])
    if config["protocol"] not in PROTOCOLS:
        raise UserError(f"unknown protocol {shown(config['protocol'])}. Valid: {', '.join(PROTOCOLS)}")
    if config["model"] not in PRESETS and config["model"] not in CLASSICAL:
        raise UserError(f"unknown model preset {shown(config['model'])}. Valid: {', '.join([*PRESETS, *CLASSICAL])}")
    if config["ssl"] is not None and config["ssl"] not in SSL_KINDS:
        raise UserError(f"unknown self-supervised task --ssl (SSL) {shown(config['ssl'])}. Valid: none, {', '.join(SSL_KINDS)}")
    if config["ssl"] is not None and config["model"] in CLASSICAL:
        raise UserError(f"--ssl trains a network's encoder; {config['model']} is a classical detector: drop --ssl")
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
    settings must fit together, and (against_memory) its weights, gradients and Adam's two moments
    (16 bytes a parameter) must fit in MODEL_MEMORY_SHARE of this machine's memory."""
    from models import PRESETS, ModelConfig, build_model

    if config["model"] not in PRESETS:
        return
    try:
        with torch.device("meta"):
            model = build_model(config["model"], tuple(shape), ModelConfig.from_settings(config))
    except ValueError as error:
        raise UserError(str(error)) from None
    n = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    memory = machine_memory() if against_memory else None
    if memory and 16 * n > MODEL_MEMORY_SHARE * memory:
        raise UserError(f"the {config['model']} model for {' x '.join(map(str, shape))} images would have {n:,} "
                        f"parameters ({16 * n / 2**30:.1f} GiB to train), more than this machine's memory allows "
                        f"({memory / 2**30:.1f} GiB): lower --latent-dim, --n-slots, --memae-slots or --channels.")


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
    steps = sum(min(config["batch_size"], n_train - start) >= 2 for start in range(0, n_train, config["batch_size"]))
    needed = -(-config["min_steps"] // max(steps, 1))
    if needed <= config["epochs"]:
        return None
    return (f"{steps} optimiser step(s) an epoch on {n_train} training images: MIN_STEPS {config['min_steps']} -> "
            f"at least {needed} epochs, more than EPOCHS {config['epochs']} (--min-steps 0: EPOCHS epochs exactly)")


def _normal(value):
    return list(value) if isinstance(value, tuple) else value
