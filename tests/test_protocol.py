"""Tests of tool/data/protocol.py: both protocols' splits, the seeded validation hold-out, classes by name or index,
every planned trial's split checked up front."""
import re

import numpy as np
import pytest
import torch

from conftest import rows
from tool.data.datasets import load_dataset
from tool.errors import UserError
from tool.data.protocol import check_trials, make_split, split_one_anomalous_class, split_one_normal_class


PROTOCOLS = {"one-anomalous-class": lambda labels, c: labels == c,  # -> which images are anomalies
             "one-normal-class": lambda labels, c: labels != c}


@pytest.fixture
def tiny(tmp_path, make_prepared):
    return load_dataset(make_prepared(tmp_path, n_train_per_class=20, n_test_per_class=5), tmp_path)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocol_split(tiny, protocol):
    c = 3
    split = make_split(tiny, protocol, c, val_fraction=0.1, seed=0)
    is_anomaly = PROTOCOLS[protocol]
    label_of = {image.numpy().tobytes(): int(label) for image, label in zip(tiny.train_images, tiny.train_labels)}
    train_labels = torch.tensor([label_of[r] for r in rows(split.train)])
    val_labels = torch.tensor([label_of[r] for r in rows(split.val)])
    assert not is_anomaly(train_labels, c).any() and not is_anomaly(val_labels, c).any()
    normal = tiny.train_images[~is_anomaly(tiny.train_labels, c)]
    assert rows(torch.cat([split.train, split.val])) == rows(normal)  # all normal images, each once
    assert not set(rows(split.train)) & set(rows(split.val))
    assert len(split.val) == round(0.1 * len(normal))
    assert torch.equal(split.test, tiny.test_images)
    assert torch.equal(split.test_targets, is_anomaly(tiny.test_labels, c).long())
    assert split.counts["test"] == (int((split.test_targets == 0).sum()), int(split.test_targets.sum()))
    assert split.counts["train"] == (len(split.train), 0) and split.counts["validation"] == (len(split.val), 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocol_split_is_seeded(tiny, protocol):
    first, again, other = (make_split(tiny, protocol, 3, seed=s) for s in (0, 0, 1))
    assert torch.equal(first.train, again.train) and torch.equal(first.val, again.val)
    assert rows(first.val) != rows(other.val)


def test_protocol_functions_and_class_by_name_or_index(tiny):
    by_index = split_one_anomalous_class(tiny, 4)
    for value in ("class4", "4", np.int64(4)):
        assert torch.equal(split_one_anomalous_class(tiny, value).val, by_index.val)
    assert torch.equal(split_one_normal_class(tiny, "class4").test_targets, (tiny.test_labels != 4).long())
    with pytest.raises(UserError, match="unknown protocol 'both'. Valid: one-anomalous-class, one-normal-class"):
        make_split(tiny, "both", 4)


@pytest.mark.parametrize("value", [10, -1, "10", "class10", 2.5], ids=["10", "-1", "str-10", "class10", "2.5"])
def test_class_outside_the_dataset_gives_the_valid_range(tiny, value):
    for protocol in PROTOCOLS:
        with pytest.raises(UserError, match=r"valid are 0\.\.9"):
            make_split(tiny, protocol, value)


# ---------------------------------------------------------------------------------------------
# check_trials: every planned trial's split counted from the labels, before anything is created
# ---------------------------------------------------------------------------------------------
def test_check_trials_accepts_what_make_split_can_split(tiny):
    for protocol in PROTOCOLS:
        check_trials(tiny, protocol, range(10), 0.1)


@pytest.mark.parametrize("val_fraction, message", [
    (0.999, r"class 0 \(class0\) of tiny, --protocol one-normal-class: --val-fraction \(VAL_FRACTION\) 0.999 holds out "
            r"20 of its 20 normal training images for validation and leaves 0 for training, but validation needs at "
            r"least 1 and training at least 2; a value in \[0.0251, 0.9249\] works for every planned class"),
    (0.01, r"holds out 0 of its 20 normal training images"),
])
def test_check_trials_names_val_fraction_and_the_values_that_work(tiny, val_fraction, message):
    with pytest.raises(UserError, match=message) as error:
        check_trials(tiny, "one-normal-class", [0, 1], val_fraction)
    low, high = (float(v) for v in re.search(r"\[([\d.]+), ([\d.]+)\]", str(error.value)).groups())
    for fraction in (low, high):  # the range the message gives works
        check_trials(tiny, "one-normal-class", [0, 1], fraction)
        make_split(tiny, "one-normal-class", 0, fraction)


def test_check_trials_refuses_a_test_split_without_anomalies_or_normal_images(tmp_path, make_prepared):
    name = make_prepared(tmp_path, "one-class-test", n_train_per_class=6, n_test_per_class=3, n_classes=2)
    ds = load_dataset(name, tmp_path)
    ds.test_images, ds.test_labels = ds.test_images[ds.test_labels == 1], ds.test_labels[ds.test_labels == 1]
    with pytest.raises(UserError, match=r"class 1 \(class1\) of one-class-test, --protocol one-normal-class: the test "
                                        r"split holds no anomalous image \(its 3 test images are all normal\), and the "
                                        r"metrics need both. Add test images of other classes than class1"):
        check_trials(ds, "one-normal-class", [1], 0.1)
    with pytest.raises(UserError, match="the test split holds no normal image .* Add test images of other classes"):
        check_trials(ds, "one-anomalous-class", [1], 0.1)
    with pytest.raises(UserError, match="the test split holds no anomalous image .* Add test images of class class0"):
        check_trials(ds, "one-anomalous-class", [0], 0.1)
    with pytest.raises(UserError, match="the test split holds no normal image .* Add test images of class class0"):
        check_trials(ds, "one-normal-class", [0], 0.1)
