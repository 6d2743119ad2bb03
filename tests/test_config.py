"""Config validation: typo suggestions, types, precedence, shipped YAMLs."""

import pytest

from otadet.config import ConfigError, load_model_config, make_args, model_config_from_dict
from otadet.utils.paths import asset_dir


def test_every_shipped_model_yaml_loads():
    names = sorted(p.name for p in asset_dir("cfg").glob("ota_*.yaml"))
    assert {"ota_tiny.yaml", "ota_r18.yaml", "ota_r50.yaml", "ota_r101.yaml", "ota_x101.yaml"} <= set(names)
    for name in names:
        cfg = load_model_config(name)
        assert cfg.name == name.removesuffix(".yaml")


def test_r50_is_the_paper_default():
    cfg = load_model_config("ota_r50.yaml")
    assert cfg.backbone.arch == "resnet50" and cfg.fpn.channels == 256 and cfg.head.num_convs == 4
    assert cfg.assigner["name"] == "ota"
    assert (cfg.loss.giou_weight, cfg.loss.iou_branch_weight, cfg.loss.focal_alpha) == (2.0, 0.5, 0.25)


def test_unknown_run_argument_suggests_the_closest_key():
    with pytest.raises(ConfigError, match=r"unknown key 'epoch'.*did you mean 'epochs'"):
        make_args({"epoch": 3})
    with pytest.raises(ConfigError, match=r"'lr0'"):
        make_args({"lr": 0.1})


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError, match=r"'epochs' must be int, got str"):
        make_args({"epochs": "three"})
    with pytest.raises(ConfigError, match=r"'val' must be bool"):
        make_args({"val": 3})
    assert make_args({"lr0": 1}).lr0 == 1.0  # an int is a fine float
    assert make_args({"imgsz": [256, 320]}).imgsz == [256, 320]


def test_precedence_defaults_model_yaml_kwargs():
    tiny = load_model_config("ota_tiny.yaml")
    args = make_args({}, model_defaults=tiny.train)
    assert args.imgsz == tiny.train["imgsz"] != make_args({}).imgsz
    assert make_args({"imgsz": 224}, model_defaults=tiny.train).imgsz == 224


def test_model_yaml_typos_and_assigner_knobs():
    with pytest.raises(ConfigError, match=r"head: unknown key 'num_conv'.*'num_convs'"):
        model_config_from_dict({"head": {"num_conv": 2}})
    with pytest.raises(ConfigError, match=r"assigner \(ota\): unknown key 'topq'.*'top_q'"):
        model_config_from_dict({"assigner": {"name": "ota", "topq": 10}})
    with pytest.raises(ConfigError, match=r"backbone.arch: unknown key 'resnet51'.*'resnet50'"):
        model_config_from_dict({"backbone": {"arch": "resnet51"}})
    cfg = model_config_from_dict({"assigner": {"name": "ota", "top_q": 10, "iou_weight": 3}})
    assert cfg.assigner == {"name": "ota", "top_q": 10, "iou_weight": 3.0}


def test_missing_model_yaml_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match=r"ota_nope.yaml.*ota_r50.yaml"):
        load_model_config("ota_nope.yaml")


def test_yaml_is_safe_loaded(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_config(bad)
