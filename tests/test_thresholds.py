"""ScoreThresholds: loading (file, dict, float, None), lookup order, validation, warnings."""

import json
import logging

import pytest

from ntt_batch.io.thresholds import ScoreThresholds


def test_none_and_float():
    th = ScoreThresholds.load(None)
    assert th.threshold(1, "dog") is None and th.keep(1, "dog", 0.0) and th.is_empty
    th = ScoreThresholds.load(0.5)
    assert th.threshold(7, None) == 0.5 and th.keep(7, "x", 0.5) and not th.keep(7, "x", 0.4999)
    assert ScoreThresholds.load("0.25").default == 0.25
    assert ScoreThresholds.load(0.5).to_dict() == {"default": 0.5}


def test_map_lookup_order(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("default: 0.5\ndog: 0.7\nCat: 0.3\n3: 0.9\n'4': 0.1\n")
    th = ScoreThresholds.load(str(p))
    assert th.threshold(1, "dog") == 0.7
    assert th.threshold(2, "cat") == 0.3  # case-insensitive fallback
    assert th.threshold(3, "bird") == 0.9  # by id
    assert th.threshold(4, None) == 0.1
    assert th.threshold(5, "horse") == 0.5  # default
    assert th.keep(1, "dog", 0.7) and not th.keep(1, "dog", 0.69)
    assert th.to_dict() == {"default": 0.5, "dog": 0.7, "Cat": 0.3, 3: 0.9, 4: 0.1}
    # exact spelling wins over the case-insensitive match
    th = ScoreThresholds.load({"Dog": 0.2, "dog": 0.8})
    assert th.threshold(1, "Dog") == 0.2 and th.threshold(1, "dog") == 0.8


def test_json_file_and_no_default(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"dog": 0.6}))
    th = ScoreThresholds.load(p)
    assert th.threshold(1, "dog") == 0.6 and th.threshold(2, "cat") is None and th.keep(2, "cat", 0.0)
    assert ScoreThresholds.load(th.to_dict()) == th


@pytest.mark.parametrize("value", [float("nan"), 1.5, -0.1, "high", True, [0.5]])
def test_invalid_values_name_class_and_value(value):
    with pytest.raises(ValueError, match=r"'dog'.*" if not isinstance(value, float) else r"'dog'"):
        ScoreThresholds.load({"dog": value})
    with pytest.raises(ValueError, match="default"):
        ScoreThresholds.load({"default": value})


def test_invalid_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        ScoreThresholds.load(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("[0.5, 0.6]\n")
    with pytest.raises(ValueError, match="mapping"):
        ScoreThresholds.load(str(bad))
    with pytest.raises(ValueError):
        ScoreThresholds.load(float("nan"))
    with pytest.raises(ValueError):
        ScoreThresholds.load(2)


def test_unknown_classes_warn_once(caplog):
    th = ScoreThresholds.load({"dgo": 0.5, "cat": 0.4, 9: 0.1})
    with caplog.at_level(logging.WARNING):
        assert th.warn_unknown([(1, "dog"), (2, "cat")]) == ["dgo", "9"]
        th.warn_unknown([(1, "dog"), (2, "cat")])
    warnings = [r for r in caplog.records if "match no class" in r.getMessage()]
    assert len(warnings) == 1 and "dgo" in warnings[0].getMessage()
