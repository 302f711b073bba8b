"""The recipes' batch advice: one warning line when a sub-class head sees too few examples per step."""

import dataclasses

from keras_dc import config as config_lib
from keras_dc.config import Config


def test_a_warning_below_8_examples_per_sub_class_head_per_step():
    paper = Config(batch_size=3072, k=320000, super_clusters=4, rotation=True)  # S = 16: 192 per head
    assert config_lib.head_batch_warning(paper) is None
    assert config_lib.head_batch_warning(dataclasses.replace(paper, batch_size=128)) is None  # 8 per head
    line = config_lib.head_batch_warning(dataclasses.replace(paper, batch_size=96))
    assert "\\n" not in line and "--batch_size=96 over 16 super-classes" in line and " 6 examples" in line
    rotnet = Config(batch_size=16, k=1, super_clusters=1, rotation=True)  # no sub-class head to starve
    assert config_lib.head_batch_warning(rotnet) is None


def test_training_prints_the_warning_before_any_work(tiny_config):
    from keras_dc import train

    lines = []
    train.prepare_data(tiny_config, log=lines.append)  # batch 16 over S = 8: 2 per head
    assert [line for line in lines if "examples per step" in line] == [
        "warning: " + config_lib.head_batch_warning(tiny_config)]
