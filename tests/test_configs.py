"""The config files: the shared variant parser, every file's variants, one data schema."""

import importlib.util
import pathlib

import pytest

from kd_jax import train
from kd_jax.data import sources

REPO = pathlib.Path(__file__).resolve().parents[1]

# Each config file and the variants its docstring names.
VARIANTS = {
    "smoke": ["smoke"],
    "quickstart": ["smoke"],
    "pkd_hmdb": ["smoke", "split=2", "split=3,smoke"],
    "pkd_ucf101": ["smoke", "split=2", "smoke,split=3"],
    "genkd_quickstart": ["smoke"],
    "genkd_ucf101": ["smoke"],
    "genkd_hmdb51": ["smoke"],
    "genkd_thumos14": ["smoke"],
    "genkd_detection_quickstart": ["smoke"],
    "spectral_quickstart": ["full", "smoke"],
    "spectral_ssv2": ["r18", "smoke"],
    "spectral_jester": ["r18", "smoke"],
    "spectral_kinetics": ["r18", "smoke"],
}


def _load(name: str):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_config_file_is_listed():
  assert sorted(p.stem for p in (REPO / "configs").glob("*.py")) == sorted(VARIANTS)


@pytest.mark.parametrize("arg, want", [
    (None, {}), ("", {}), ("smoke", {"smoke": True}), ("split=2", {"split": 2}),
    ("split=2,smoke", {"split": 2, "smoke": True}), (" smoke , split=3", {"split": 3, "smoke": True}),
])
def test_parse_arg(arg, want):
  assert train.parse_arg(arg, allowed={"split": int, "smoke": bool}, config_file="c.py") == want


@pytest.mark.parametrize("arg, why", [
    ("spilt=2", "unknown 'spilt'"), ("smoke=1", "'smoke' takes no value"),
    ("split", "write split=<int>"), ("split=two", "split='two' is not an int"),
    ("smoke,smoke", "'smoke' given twice"), ("smoke,", "an empty item"),
])
def test_parse_arg_errors_name_the_file_and_the_variants(arg, why):
  with pytest.raises(ValueError) as e:
    train.parse_arg(arg, allowed={"split": int, "smoke": bool}, config_file="configs/x.py")
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"configs/x.py has no variant {arg!r}")
  assert why in msg and msg.endswith("comma-separated list of: split=<int>, smoke")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_build_and_unknown_ones_are_one_line(name):
  module = _load(name)
  for arg in [None, ""] + VARIANTS[name]:
    config = module.get_config(arg)
    assert config.method in ("smoke", "pkd", "genkd", "genkd_detection", "spectral")
  with pytest.raises(ValueError, match=rf"^configs/{name}\.py has no variant 'bogus'"):
    module.get_config("bogus")


@pytest.mark.parametrize("name", sorted(set(VARIANTS) - {"smoke"}))
def test_every_method_reads_the_shared_data_fields(name):
  shared = set(sources.data_config().keys())
  for arg in [None] + VARIANTS[name]:
    data = _load(name).get_config(arg).data
    assert shared <= set(data.keys()), sorted(shared - set(data.keys()))
    assert set(data.synthetic.keys()) >= set(sources.SYNTHETIC_FIELDS)


def test_pkd_split_variant_sets_the_builder_config():
  module = _load("pkd_hmdb")
  assert module.get_config(None).data.config == "split1"
  assert module.get_config("split=3,smoke").data.config == "split3"
  with pytest.raises(ValueError, match="hmdb51 has the official splits 1, 2 and 3"):
    module.get_config("split=4")


def test_data_config_sets_and_adds_fields():
  data = sources.data_config(name="ucf101", clip_len=16, synthetic=dict(num_classes=3))
  assert data.name == "ucf101" and data.clip_len == 16 and data.synthetic.num_classes == 3
  assert data.config == "" and data.num_workers == 0  # the others keep their defaults
