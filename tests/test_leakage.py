"""Tests of tool/report/leakage.py: neighbourhood class leakage on hand-made geometry, and on a run."""
import json

import pytest
import torch

import main
from conftest import run_main
from tool.report.leakage import class_leakage


def test_a_separate_class_leaks_nothing_and_a_mixed_one_about_one():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(50)
    separate = torch.randn(200, 2, generator=g) * 0.1 + labels.unsqueeze(1) * 10.0  # four far-apart blobs
    assert class_leakage(separate, labels, 2, k=5) == 0.0
    mixed = torch.randn(200, 2, generator=g)  # every class drawn from one cloud
    assert class_leakage(mixed, labels, 2, k=10) == pytest.approx(1.0, abs=0.3)
    # class 2 laid on top of class 1: half of class 1's neighbours are of class 2, none of the
    # others': (50 x 0.5 / 150 other images) / (50 / 200 of all images) = 2/3, give or take a tie
    overlap = separate.clone()
    overlap[labels == 2] = separate[labels == 1] + 0.01
    assert class_leakage(overlap, labels, 2, k=5) == pytest.approx(2 / 3, abs=0.15)


def test_leakage_of_a_run_is_written_and_shown_beside_the_per_class_table(data_dir, tmp_path):
    run_dir = run_main(data_dir, tmp_path, "--classes", "0", "1", "--seeds", "0", "--epochs", "2")
    table = main.run(["--leakage", str(run_dir)])
    saved = json.loads((run_dir / "leakage.json").read_text())
    assert set(saved["classes"]) == {str(c) for c in range(10)}
    assert set(table[0]) == {"class_name", "pixels", "latent", "latent_seed"} and "latent" not in table[5]
    assert all(0 <= row["pixels"] < 10 for row in table.values())
    text = main.run(["--compare", str(tmp_path)])
    header = next(line for line in text.splitlines() if line.startswith("| class"))
    assert "leakage, pixels" in header and "leakage, latent of cascade" in header
    # a second run with its own leakage: one latent column per run, one pixel column for all
    other = run_main(data_dir, tmp_path, "--classes", "0", "--seeds", "0", "--epochs", "1", "--latent-dim", "8")
    other_table = main.run(["--leakage", str(other)])
    lines = main.run(["--compare", str(tmp_path)]).splitlines()

    def cells(start):  # the cells of the per-class table's line that starts with `start`
        return [cell.strip() for cell in next(line for line in lines if line.startswith(start)).split("|")]

    header = cells("| class")
    latent = [cell for cell in header if cell.startswith("leakage, latent of ")]
    assert header.count("leakage, pixels") == 1 and len(latent) == 2 and latent[0] != latent[1]
    row = cells("| 0 ")
    assert sorted(row[header.index(name)] for name in latent) == sorted(f"{t[0]['latent']:.2f}"
                                                                        for t in (table, other_table))
    row = cells("| 1 ")
    assert sorted(row[header.index(name)] for name in latent) == ["-", f"{table[1]['latent']:.2f}"]
