"""Group-aware splitting: augmented copies of one source never straddle a split."""
import numpy as np
import pytest

from data_pipeline import DataError
from data_pipeline.ingest import scan
from data_pipeline.split import make_split, resolve_groups
from tests.conftest import REFERENCE


def _groups(images, classes):
    return {f"{classes[l]}/{p.name.split('_')[1]}" for p, l in zip(images.files, images.labels)}


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference data not present")
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_reference_validation_split_never_shares_a_source_group(seed):
    index = scan(REFERENCE, read_test=False)
    split = make_split(index, "auto", seed=seed)
    assert split.rule.startswith("filename:")
    train_groups, val_groups = _groups(split.train, index.classes), _groups(split.val, index.classes)
    assert train_groups and val_groups and not train_groups & val_groups
    assert len(split.train) + len(split.val) == len(index.train)
    # every class is validated, and roughly a fifth of the images are held out
    assert set(split.val.labels) == set(range(len(index.classes)))
    assert 0.1 < len(split.val) / len(index.train) < 0.3


def test_same_group_index_in_two_classes_is_two_groups(make_dataset):
    index = scan(make_dataset(classes=2, groups=5))
    rule = resolve_groups("filename", index, index.train)
    assert len(set(rule.groups)) == 10


def test_split_is_seeded(make_dataset):
    index = scan(make_dataset(groups=6))
    a, b = make_split(index, seed=3), make_split(index, seed=3)
    assert a.val.files == b.val.files
    assert any(make_split(index, seed=s).val.files != a.val.files for s in range(4, 10))


def test_flat_layout_gets_group_aware_test_part(make_dataset):
    index = scan(make_dataset(classes=4, layout="flat", groups=10, per_group=3))
    split = make_split(index, seed=0)
    parts = [_groups(p, index.classes) for p in (split.train, split.val, split.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    manifest = split.manifest(index.root)
    assert manifest["test"] and manifest["rule"].startswith("filename")


def test_csv_rule(make_dataset, tmp_path):
    index = scan(make_dataset(classes=2, groups=4, per_group=2))
    rows = ["file,group"] + [f"{p.name},{i // 4}" for i, p in enumerate(index.train.files)]
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text("\n".join(rows))
    split = make_split(index, f"csv:{csv_path}", seed=0)
    by_file = {p.name: i // 4 for i, p in enumerate(index.train.files)}
    assert not {by_file[p.name] for p in split.train.files} & {by_file[p.name] for p in split.val.files}


def test_auto_falls_back_to_none_and_says_so(make_dataset):
    root = make_dataset(classes=2, groups=3)
    for path in (root / "TRAIN").rglob("*.png"):
        path.rename(path.with_name("cell" + path.name))
    index = scan(root)
    assert "none" in make_split(index, "auto").rule
    with pytest.raises(DataError, match="does not match"):
        make_split(index, "filename")


@pytest.mark.parametrize("rule, message", [
    ("bogus", "unknown rule"),
    ("filename:(", "invalid regular expression"),
    ("filename:\\d+", "named group"),
    ("csv:/no/such.csv", "does not exist"),
])
def test_bad_rules(make_dataset, rule, message):
    index = scan(make_dataset())
    with pytest.raises(DataError, match=message):
        make_split(index, rule)


def test_class_with_one_group_is_refused(make_dataset):
    index = scan(make_dataset(classes=2, groups=1))
    with pytest.raises(DataError, match="only 1 source group"):
        make_split(index)


def test_labels_preserved(make_dataset):
    index = scan(make_dataset(classes=3, groups=5))
    split = make_split(index)
    for part in (split.train, split.val):
        for path, label in zip(part.files, part.labels):
            assert path.parent.name == index.classes[label]
    assert np.bincount(split.val.labels).min() > 0


def test_uneven_groups_still_put_every_class_on_both_sides(make_dataset):
    root = make_dataset(classes=3, groups=6, per_group=4)
    rare = root / "TRAIN" / "class2"
    for path in rare.iterdir():  # class2: one big group and one single-image group
        group, n = path.stem.split("_")[1:]
        if group not in ("0", "1") or (group == "1" and n != "0"):
            path.unlink()
    index = scan(root)
    for seed in range(25):
        split = make_split(index, seed=seed)
        assert set(split.val.labels) == set(split.train.labels) == {0, 1, 2}, seed


def test_the_setting_a_split_error_names_is_a_make_variable(make_dataset):
    """The split errors say 'change VAL_FRACTION': `make search` must take it and the README list it."""
    import re
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    with pytest.raises(DataError) as raised:
        make_split(scan(make_dataset(classes=2, groups=3)), val_fraction=0.9)
    name = re.match(r"([A-Z_]+)=", str(raised.value)).group(1)
    assert name == "VAL_FRACTION"
    out = subprocess.run(["make", "-n", "search", f"{name}=0.3", "DATA=/data"], cwd=repo, capture_output=True,
                         text=True, check=True).stdout.replace("\\\n", " ")
    assert '--val-fraction "0.3"' in next(line for line in out.splitlines() if "hematune search" in line)
    assert f"| `{name}` |" in (repo / "README.md").read_text()
