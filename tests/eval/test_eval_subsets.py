"""Class-balanced label fractions: exact counts, determinism, seeds, and the subset file round trip."""

from __future__ import annotations

from collections import Counter

import pytest

from container_ssl.data.subsets import (
    read_subset_file,
    select_subset,
    write_subset_file,
)
from container_ssl.errors import UserError

# 3 classes of unequal size: 100, 40, 7 images
TARGETS = [0] * 100 + [1] * 40 + [2] * 7
SAMPLES = [(f"/data/train/c{t}/img_{i:04d}.jpg", t) for i, t in enumerate(TARGETS)]


@pytest.mark.parametrize("fraction,expected", [(0.1, {0: 10, 1: 4, 2: 1}), (0.01, {0: 1, 1: 1, 2: 1}),
                                               (0.5, {0: 50, 1: 20, 2: 4}), (1.0, {0: 100, 1: 40, 2: 7})])
def test_exact_per_class_counts(fraction, expected):
    chosen = select_subset(TARGETS, fraction, seed=0)
    assert chosen == sorted(set(chosen))
    assert Counter(TARGETS[i] for i in chosen) == expected


def test_deterministic_and_seeded():
    a = select_subset(TARGETS, 0.1, seed=3)
    assert a == select_subset(TARGETS, 0.1, seed=3)
    assert a != select_subset(TARGETS, 0.1, seed=4)


def test_bad_fraction():
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(UserError, match="label fraction"):
            select_subset(TARGETS, bad, seed=0)


def test_subset_file_round_trip(tmp_path):
    chosen = select_subset(TARGETS, 0.1, seed=0)
    path = write_subset_file(tmp_path / "subset_0.1.txt", SAMPLES, chosen)
    lines = path.read_text().splitlines()
    assert len(lines) == len(chosen) and all(line.startswith("c") and line.count("/") == 1 for line in lines)
    assert read_subset_file(path, SAMPLES) == chosen


def test_subset_file_bare_names_and_comments(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("# ImageNet-style list\nimg_0003.jpg\n\nc1/img_0100.jpg\n")
    assert read_subset_file(path, SAMPLES) == [3, 100]


def test_subset_file_names_missing_images(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("c0/img_0001.jpg\nc0/nope.jpg\nc9/img_0002.jpg\n")
    with pytest.raises(UserError, match=r"names 2 image\(s\) not in the dataset: c0/nope.jpg, c9/img_0002.jpg"):
        read_subset_file(path, SAMPLES)
    with pytest.raises(UserError, match="not found"):
        read_subset_file(tmp_path / "absent.txt", SAMPLES)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UserError, match="lists no images"):
        read_subset_file(tmp_path / "empty.txt", SAMPLES)


ODD_NAMES = ["two\nlines.jpg", " lead.jpg", "trail.jpg ", "#hash.jpg", '"quoted".jpg', "back\\slash.jpg",
             "tab\there.jpg", "sep\u2028ara.jpg", "cr\r.jpg", "caf\u00e9.jpg", "\udcffnot-utf8.jpg"]


def test_subset_file_round_trips_any_file_name(tmp_path):
    samples = [(f"/data/train/c{i % 2}/{name}", i % 2) for i, name in enumerate(ODD_NAMES)]
    samples += [(f"/data/train/c0/plain_{i}.jpg", 0) for i in range(3)]
    chosen = [i for i in range(len(samples)) if i != len(ODD_NAMES)]
    path = write_subset_file(tmp_path / "subset_odd.txt", samples, chosen)
    assert read_subset_file(path, samples) == chosen
    lines = path.read_text(encoding="utf-8").split("\n")
    assert len(lines) == len(chosen) + 1 and lines[-1] == ""  # one line per name, however odd
    assert "c1/caf\u00e9.jpg" in lines and "c0/plain_1.jpg" in lines  # ordinary names stay plain lines
    assert '"c0/two\\nlines.jpg"' in lines


def test_subset_file_with_a_broken_quoted_line_is_one_line_error(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text('c0/img_0001.jpg\n"c0/img_0002.jpg\n')
    with pytest.raises(UserError, match=r"list.txt line 2 starts with a quote but is not one JSON string"):
        read_subset_file(path, SAMPLES)
    path.write_text('"c0/nope\\nx.jpg"\n')
    with pytest.raises(UserError, match=r'not in the dataset: "c0/nope\\nx.jpg";') as e:
        read_subset_file(path, SAMPLES)
    assert "\n" not in str(e.value)
