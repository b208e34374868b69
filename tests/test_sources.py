"""Opening a prepared dataset for a method (kd_jax.data.sources): first-use preparation, the
one-line errors with the command to run, and the multi-process barrier (faked process counts)."""

import shlex

import jax
from jax.experimental import multihost_utils
import pytest

from kd_jax.data import prepare
from kd_jax.data import sources
from kd_jax.data.builders.common import DatasetError

# 2 classes x (2 train + 1 test) clips of 8 frames at 16x16: about a second to generate.
SIZE = dict(num_classes=2, train_clips=2, test_clips=1, num_frames=8, height=16, width=16)
NAME = "synthetic_actions/c2_2x1_f8_16x16"


@pytest.fixture
def generate_calls(monkeypatch):
  """Counts the generations that go through ``prepare.generate``."""
  calls = []
  real = prepare.generate

  def spy(builder, **kwargs):
    calls.append(f"{builder.name}/{builder.builder_config.name}")
    return real(builder, **kwargs)

  monkeypatch.setattr(prepare, "generate", spy)
  return calls


def _open(data_dir, **kwargs):
  kwargs.setdefault("auto_prepare", True)
  return sources.open_splits("synthetic_actions", data_dir=str(data_dir), synthetic=SIZE, **kwargs)


def _one_line(error: pytest.ExceptionInfo) -> str:
  message = str(error.value)
  assert "\n" not in message, message
  return message


def test_config_names_keep_the_prepared_data_of_earlier_versions():
  # The names PKD and GenKD used before the seed existed: their users' prepared copies are reused.
  assert prepare.synthetic_config_name(**SIZE) == "c2_2x1_f8_16x16"
  assert prepare.synthetic_config_name(**SIZE, seed=0) == "c2_2x1_f8_16x16"
  assert prepare.synthetic_config_name(**SIZE, seed=7) == "c2_2x1_f8_16x16_s7"
  builder = prepare.get_builder("synthetic_actions/c2_2x1_f8_16x16_s7")
  assert builder.builder_config.seed == 7 and builder.builder_config.spec.height == 16


def test_prepares_on_first_use_then_reuses(tmp_path, generate_calls):
  opened = _open(tmp_path, prepare_workers=1)
  assert generate_calls == [NAME]
  assert opened.name == NAME
  assert (len(opened.train), len(opened.eval)) == (2 * 2, 2 * 1)
  assert len(opened.class_names) == 2
  record = opened.train[0]
  assert set(record) >= {"video", "label", "video_id", "num_frames"}
  assert int(record["num_frames"]) == 8

  again = _open(tmp_path)
  assert generate_calls == [NAME], "the second call must not prepare again"
  assert (len(again.train), len(again.eval)) == (4, 2)
  # Sliced splits pass through to TFDS.
  assert len(_open(tmp_path, train_split="train[:1]").train) == 1


def test_unprepared_without_auto_prepare_names_a_command_that_works(tmp_path, generate_calls):
  with pytest.raises(DatasetError) as error:
    _open(tmp_path, auto_prepare=False)
  line = _one_line(error)
  command = f"python -m kd_jax.data.prepare {NAME} --data_dir {tmp_path}"
  assert command in line and "auto_prepare=True" in line and "--manual_dir" not in line
  assert not generate_calls
  # The command line builds the sized copy the method asked for, under the same name.
  assert prepare.main(shlex.split(command)[3:]) == 0
  assert len(_open(tmp_path, auto_prepare=False).train) == 4


def test_manual_download_dataset_says_where_to_put_it(tmp_path):
  empty = tmp_path / "tfds"
  empty.mkdir()
  with pytest.raises(DatasetError) as error:
    sources.open_splits("ucf101", "split1", data_dir=str(empty), auto_prepare=True)
  line = _one_line(error)
  assert (f"python -m kd_jax.data.prepare ucf101/split1 --data_dir {empty} --manual_dir DIR "
          "(see docs/data.md)") in line
  assert "auto_prepare" not in line  # a run never downloads


def test_bad_split_lists_the_splits_and_the_field(tmp_path):
  _open(tmp_path)
  with pytest.raises(DatasetError) as error:
    _open(tmp_path, eval_split="validation")
  line = _one_line(error)
  assert "has no split 'validation'" in line and "its splits are train, test" in line
  assert "config.data.eval_split" in line
  with pytest.raises(DatasetError) as error:
    _open(tmp_path, train_split="train[:abc]")
  assert "config.data.train_split" in _one_line(error)
  with pytest.raises(DatasetError) as error:
    _open(tmp_path, eval_split="valid", split_fields=None)
  assert "fixed split names" in _one_line(error)


def test_bad_names_and_sizes_are_one_line(tmp_path):
  with pytest.raises(DatasetError, match="unknown dataset 'kinetics'"):
    sources.open_splits("kinetics", data_dir=str(tmp_path))
  with pytest.raises(DatasetError, match="ucf101 has no config 'split4'"):
    sources.open_splits("ucf101", "split4", data_dir=str(tmp_path))
  with pytest.raises(DatasetError, match=r"unknown fields \['frames'\], missing \['num_frames'\]"):
    sources.open_splits("synthetic_actions", data_dir=str(tmp_path),
                        synthetic={**{k: v for k, v in SIZE.items() if k != "num_frames"},
                                   "frames": 8})
  with pytest.raises(DatasetError, match=">= 16x16"):
    sources.open_splits("synthetic_actions", data_dir=str(tmp_path),
                        synthetic={**SIZE, "height": 8})


@pytest.fixture
def processes(monkeypatch):
  """Fakes a run of 2 processes: ``set(index)`` picks this one; ``calls`` records the barriers."""
  barriers, actions = [], []

  def barrier(name):
    barriers.append(name)
    for action in actions:
      action()

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "sync_global_devices", barrier)

  class Processes:
    calls = barriers
    at_barrier = actions  # what the other processes do while this one waits

    @staticmethod
    def set(index):
      monkeypatch.setattr(jax, "process_index", lambda: index)

  return Processes


def test_multi_process_zero_prepares_before_the_barrier(tmp_path, generate_calls, processes):
  processes.set(0)
  opened = _open(tmp_path)
  assert generate_calls == [NAME] and len(processes.calls) == 1
  assert len(opened.train) == 4


def test_multi_process_others_wait_and_reopen(tmp_path, generate_calls, processes):
  processes.set(1)
  # Process 0 prepares (through the command line's code path) while process 1 waits.
  processes.at_barrier.append(lambda: prepare.prepare(NAME, data_dir=str(tmp_path)))
  opened = _open(tmp_path)
  assert not generate_calls and len(processes.calls) == 1
  assert (len(opened.train), len(opened.eval)) == (4, 2)


def test_multi_process_enters_the_barrier_even_when_already_prepared(tmp_path, processes):
  # A late process may find process 0's files already there; skipping the barrier would hang 0.
  prepare.prepare(NAME, data_dir=str(tmp_path))
  processes.set(1)
  assert len(_open(tmp_path).train) == 4 and len(processes.calls) == 1


def test_multi_process_unshared_data_dir_is_one_line(tmp_path, processes):
  processes.set(1)  # process 0 "prepared" elsewhere: nothing appears in this data_dir
  with pytest.raises(DatasetError) as error:
    _open(tmp_path)
  line = _one_line(error)
  assert "all hosts share" in line and f"prepare {NAME} --data_dir {tmp_path}" in line


def test_multi_process_zero_reaches_the_barrier_when_preparing_fails(tmp_path, monkeypatch,
                                                                     processes):
  processes.set(0)

  def fail(builder, **kwargs):
    raise DatasetError("disk full")

  monkeypatch.setattr(prepare, "generate", fail)
  with pytest.raises(DatasetError, match="disk full"):
    _open(tmp_path)
  assert len(processes.calls) == 1, "the other processes must not be left waiting"
