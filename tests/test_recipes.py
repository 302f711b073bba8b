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


def _recipe(name: str) -> Config:
    """The Config a flagfile of flags/ describes (--name=value, --name, --noname lines; # comments)."""
    import os

    fields = {field.name: field.type for field in dataclasses.fields(Config)}
    values = {}
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "flags", name)) as handle:
        for line in (line.strip() for line in handle):
            if not line.startswith("--"):
                continue
            key, _, value = line[2:].partition("=")
            if not value:
                key, value = (key[2:], False) if key.startswith("no") and key[2:] in fields else (key, True)
            default = getattr(Config(), key)
            values[key] = value if isinstance(value, bool) else type(default)(value)
    return Config(**values)


def test_the_photos_recipe_is_valid_and_gives_each_head_at_least_8_examples(tmp_path):
    recipe = dataclasses.replace(_recipe("small_photos.flags"), workdir=str(tmp_path / "run"))
    config_lib.validate(recipe)
    assert recipe.sobel and recipe.flip and config_lib.head_batch_warning(recipe) is None
