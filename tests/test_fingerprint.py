"""A study follows its data by content: an identical copy resumes and reports, changed content is refused."""
import shutil

import pytest

from reports.errors import ReportError
from reports.study import check_data_unchanged, load
from search.errors import SearchConfigError
from search.runner import SearchConfig, run_search

pytestmark = pytest.mark.integration

TINY_CNN = {"image_size": 32, "blocks": 2, "base_width": 8, "batch_size": 32, "dense_units": 0}


def test_a_study_follows_an_identical_copy_of_its_data_and_refuses_changed_content(make_dataset, tmp_path):
    root = make_dataset(classes=3, groups=4, per_group=3)
    studies = tmp_path / "studies"
    config = SearchConfig(data=str(root), model="cnn", study="copied", studies_dir=studies, trials=1,
                          max_epochs=1, pruner="none", fixed=dict(TINY_CNN))
    run_search(config)
    copy = tmp_path / "restored"
    shutil.copytree(root, copy, copy_function=shutil.copy)  # a restored backup: same bytes, new times
    shutil.rmtree(root)

    config.data, config.trials = str(copy), 2
    study = run_search(config).study  # the same STUDY resumes on the copy
    assert len(study.trials) == 2
    check_data_unchanged(load("copied", studies_dir=studies), copy)  # and its report accepts the copy

    victim = sorted((copy / "TRAIN" / "class1").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 0xFF]))
    config.trials = 3
    with pytest.raises(SearchConfigError, match=r"STUDY=copied: was created on other data \(fingerprint "):
        run_search(config)
    with pytest.raises(ReportError, match=r"changed since study copied ran \(fingerprint "):
        check_data_unchanged(load("copied", studies_dir=studies), copy)
