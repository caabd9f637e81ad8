"""Tests for jaxtrain.config (Reader, check_all_read, steps) and jaxtrain.registry."""

import collections

import ml_collections
import numpy as np
import pytest

from jaxtrain import config as config_lib
from jaxtrain.errors import UserError
from jaxtrain.registry import Registry


def make_reader(**values):
  return config_lib.Reader(ml_collections.ConfigDict(values))


# ---------------------------------------------------------------------------------------
# Reader: reading records keys; check_all_read reports the rest.
# ---------------------------------------------------------------------------------------


def test_reading_every_leaf_passes_check():
  r = make_reader(seed=3, optimizer=dict(name="adam", lr=0.1))
  assert r.seed == 3
  assert r.optimizer.name == "adam"
  assert r.optimizer.get("lr") == 0.1
  config_lib.check_all_read(r)  # Does not raise.


def test_unread_key_is_named():
  r = make_reader(seed=3, batch_size=8)
  assert r.seed == 3
  with pytest.raises(UserError, match="unknown config key 'batch_size'; nothing reads it"):
    config_lib.check_all_read(r)


def test_unread_key_gets_did_you_mean_from_key_the_run_asked_for():
  r = make_reader(optimizer=dict(name="adam", lrr=0.1))
  assert r.optimizer.name == "adam"
  assert r.optimizer.get("lr", 0.01) == 0.01  # Absent: the default, and recorded as asked.
  with pytest.raises(UserError) as e:
    config_lib.check_all_read(r)
  assert "unknown config key 'optimizer.lrr'" in str(e.value)
  assert "did you mean 'optimizer.lr'" in str(e.value)


def test_unread_key_without_close_match_has_no_suggestion():
  r = make_reader(seed=1, zzz=2)
  assert r.seed == 1
  with pytest.raises(UserError) as e:
    config_lib.check_all_read(r)
  assert "unknown config key 'zzz'" in str(e.value)
  assert "did you mean" not in str(e.value)


def test_several_unread_keys_are_all_listed():
  r = make_reader(a=1, b=2, c=dict(d=3))
  with pytest.raises(UserError) as e:
    config_lib.check_all_read(r)
  assert "unknown config key 'a'" in str(e.value)
  assert "(and 2 more: b, c.d)" in str(e.value)


def test_unread_keys_lists_paths_of_nested_leaves():
  r = make_reader(model=dict(name="cnn", block=dict(width=4, depth=2)), seed=0)
  assert r.model.block.width == 4
  assert sorted(config_lib.unread_keys(r)) == ["model.block.depth", "model.name", "seed"]


def test_nested_sections_share_one_record():
  r = make_reader(a=dict(b=dict(c=1, d=2)))
  b = r.a.b
  assert isinstance(b, config_lib.Reader)
  assert b.path("c") == "a.b.c"
  assert b.c == 1
  assert b.d == 2
  config_lib.check_all_read(r)


def test_plain_dict_config_is_read_too():
  r = config_lib.Reader({"a": {"b": 1}, "c": 2})
  assert r.a.b == 1
  assert r.c == 2
  config_lib.check_all_read(r)


def test_to_dict_marks_whole_section_read():
  r = make_reader(model=dict(name="mlp", hidden=(8, 8), extra=dict(x=1)), seed=0)
  assert r.model.to_dict() == {"name": "mlp", "hidden": (8, 8), "extra": {"x": 1}}
  assert config_lib.unread_keys(r) == ["seed"]


def test_to_dict_on_root_marks_everything_read():
  r = make_reader(a=1, b=dict(c=2))
  assert r.to_dict() == {"a": 1, "b": {"c": 2}}
  assert config_lib.unread_keys(r) == []


def test_take_returns_other_keys_and_marks_them_read():
  r = make_reader(model=dict(name="mlp", width=16, depth=2, unset=None, opts=dict(x=1)))
  kwargs = r.model.take("name")
  assert kwargs == {"width": 16, "depth": 2, "opts": {"x": 1}}
  # 'name' was excluded from take and is still unread.
  assert config_lib.unread_keys(r) == ["model.name"]
  assert r.model.name == "mlp"
  config_lib.check_all_read(r)


def test_section_of_missing_name_is_empty_reader():
  r = make_reader(seed=0)
  section = r.section("checkpoint")
  assert isinstance(section, config_lib.Reader)
  assert section.keys() == []
  assert section.get("keep", 5) == 5
  assert section.path("keep") == "checkpoint.keep"
  assert "keep" not in section


def test_section_of_present_name_reads_it():
  r = make_reader(checkpoint=dict(keep=2))
  assert r.section("checkpoint").keep == 2
  assert config_lib.unread_keys(r) == []


def test_reading_an_empty_section_counts_as_read():
  r = make_reader(model={})
  assert r.section("model").keys() == []
  config_lib.check_all_read(r)


def test_required_missing_key_raises_with_full_path():
  r = make_reader(optimizer=dict(name="adam"))
  with pytest.raises(UserError, match=r"config key 'optimizer\.lr' is required but not set"):
    r.optimizer.lr  # pylint: disable=pointless-statement


def test_required_missing_key_suggests_close_key():
  r = make_reader(optimizer=dict(name="adam", lrr=0.1))
  with pytest.raises(UserError, match=r"'optimizer\.lr' is required but not set \(did you mean 'optimizer\.lrr'\?\)"):
    r.optimizer.lr  # pylint: disable=pointless-statement


def test_none_value_counts_as_unset():
  r = make_reader(a=None, b=dict(c=None))
  assert "a" not in r
  assert r.get("a", 7) == 7
  assert r.b.get("c") is None
  with pytest.raises(UserError, match="config key 'a' is required but not set"):
    r.a  # pylint: disable=pointless-statement
  # None values are not leaves: nothing to report even though nothing read them as values.
  assert config_lib.unread_keys(r) == []


def test_placeholder_value_counts_as_unset():
  r = make_reader(data_dir=ml_collections.config_dict.placeholder(str))
  assert "data_dir" not in r
  assert r.get("data_dir", "/default") == "/default"
  config_lib.check_all_read(r)


def test_required_none_key_does_not_suggest_itself():
  r = make_reader(lr=None)
  with pytest.raises(UserError) as e:
    r.lr  # pylint: disable=pointless-statement
  assert "did you mean" not in str(e.value)


def test_contains_and_keys():
  r = make_reader(a=1, b=None)
  assert "a" in r
  assert "b" not in r
  assert "c" not in r
  assert sorted(r.keys()) == ["a", "b"]


def test_private_attribute_is_attribute_error_not_config_key():
  r = make_reader(a=1)
  with pytest.raises(AttributeError):
    r._missing  # pylint: disable=pointless-statement,protected-access


# ---------------------------------------------------------------------------------------
# steps(): durations in steps, epochs or examples.
# ---------------------------------------------------------------------------------------


def test_steps_from_steps():
  r = make_reader(total_steps=1000)
  assert config_lib.steps(r, "total", steps_per_epoch=11, batch_size=128) == 1000


def test_steps_from_float_whole_steps_is_int():
  n = config_lib.steps(make_reader(total_steps=20.0), "total", steps_per_epoch=11, batch_size=128)
  assert n == 20
  assert isinstance(n, int)


@pytest.mark.parametrize("key, value, expected", [
    ("total_epochs", 40, 440),
    ("total_epochs", 2.5, 28),       # 27.5 -> 28: fractions round up.
    ("total_epochs", 0.01, 1),       # Never zero steps.
    ("total_examples", 1000, 8),     # 7.8 -> 8.
    ("total_examples", 1024, 8),
])
def test_steps_converts_epochs_and_examples(key, value, expected):
  r = make_reader(**{key: value})
  assert config_lib.steps(r, "total", steps_per_epoch=11, batch_size=128) == expected


def test_steps_from_epochs_exact_product_is_not_rounded_past():
  r = make_reader(total_epochs=2.2)  # 2.2 * 25 is 55.00000000000001 in floating point.
  assert config_lib.steps(r, "total", steps_per_epoch=25, batch_size=128) == 55


def test_steps_reads_the_key():
  r = make_reader(total_epochs=3)
  config_lib.steps(r, "total", steps_per_epoch=11, batch_size=128)
  config_lib.check_all_read(r)


def test_steps_in_nested_section_uses_full_path():
  r = make_reader(schedule=dict(warmup_epochs=1, warmup_steps=5))
  with pytest.raises(UserError, match=r"set only one of schedule\.warmup_steps, schedule\.warmup_epochs"):
    config_lib.steps(r.schedule, "warmup", steps_per_epoch=11, batch_size=128)


def test_steps_two_units_set_raises_naming_both():
  r = make_reader(total_steps=100, total_examples=5000)
  with pytest.raises(UserError) as e:
    config_lib.steps(r, "total", steps_per_epoch=11, batch_size=128)
  assert "set only one of" in str(e.value)
  assert "total_steps" in str(e.value)
  assert "total_examples" in str(e.value)
  assert "total_epochs" not in str(e.value)


def test_steps_none_set_without_default_lists_the_three_names():
  r = make_reader(seed=0)
  with pytest.raises(UserError, match="set one of total_steps, total_epochs, total_examples"):
    config_lib.steps(r, "total", steps_per_epoch=11, batch_size=128)


def test_steps_none_set_returns_default():
  r = make_reader(seed=0)
  assert config_lib.steps(r, "every", steps_per_epoch=11, batch_size=128, default=None) is None
  assert config_lib.steps(r, "warmup", steps_per_epoch=11, batch_size=128, default=0) == 0


def test_steps_none_set_counts_as_unset():
  r = make_reader(every_steps=None)
  assert config_lib.steps(r, "every", steps_per_epoch=11, batch_size=128, default=7) == 7


def test_steps_typo_gets_suggestion_from_the_three_names():
  r = make_reader(total_epoch=3)
  assert config_lib.steps(r, "total", steps_per_epoch=11, batch_size=128, default=5) == 5
  with pytest.raises(UserError, match=r"unknown config key 'total_epoch' \(did you mean 'total_epochs'\?\)"):
    config_lib.check_all_read(r)


@pytest.mark.parametrize("unit", ["steps", "epochs", "examples"])
@pytest.mark.parametrize("value", [0, -1, -0.5])
def test_steps_non_positive_raises(unit, value):
  r = make_reader(**{f"total_{unit}": value})
  with pytest.raises(UserError, match=f"config key 'total_{unit}' must be a positive number, got {value!r}"):
    config_lib.steps(r, "total", steps_per_epoch=11, batch_size=128)


@pytest.mark.parametrize("value", ["10", True, (1, 2)])
def test_steps_non_numeric_raises(value):
  r = make_reader(total_epochs=value)
  with pytest.raises(UserError, match="config key 'total_epochs' must be a positive number"):
    config_lib.steps(r, "total", steps_per_epoch=11, batch_size=128)


def test_steps_non_integer_steps_raises():
  r = make_reader(total_steps=2.5)
  with pytest.raises(UserError, match="config key 'total_steps' must be a whole number, got 2.5"):
    config_lib.steps(r, "total", steps_per_epoch=11, batch_size=128)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_steps_non_finite_raises_user_error(value):
  r = make_reader(total_steps=value)
  with pytest.raises(UserError):
    config_lib.steps(r, "total", steps_per_epoch=11, batch_size=128)


# ---------------------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------------------


def test_registry_register_and_get():
  widgets = Registry("widget")

  @widgets.register("square")
  def square(x):
    return x * x

  assert widgets.get("square") is square
  assert widgets.get("square")(3) == 9
  assert widgets.names() == ["square"]


def test_registry_names_are_sorted():
  widgets = Registry("widget")
  widgets.register("b")(1)
  widgets.register("a")(2)
  assert widgets.names() == ["a", "b"]


def test_registry_duplicate_raises():
  widgets = Registry("widget")
  widgets.register("square")(object())
  with pytest.raises(ValueError, match="widget 'square' is registered twice"):
    widgets.register("square")(object())


def test_registry_unknown_name_lists_known_and_suggests():
  widgets = Registry("widget")
  widgets.register("square")(1)
  widgets.register("circle")(2)
  with pytest.raises(UserError) as e:
    widgets.get("sqare")
  message = str(e.value)
  assert "unknown widget 'sqare'" in message
  assert "(did you mean 'square'?)" in message
  assert "known: circle, square" in message


def test_registry_unknown_name_without_close_match():
  widgets = Registry("widget")
  widgets.register("square")(1)
  with pytest.raises(UserError) as e:
    widgets.get("triangle")
  assert "unknown widget 'triangle'; known: square" in str(e.value)
  assert "did you mean" not in str(e.value)


def test_registry_non_string_name_raises():
  widgets = Registry("widget")
  with pytest.raises(UserError, match="widget name must be a string, got 3"):
    widgets.get(3)


def test_registry_module_path_imports_object():
  widgets = Registry("widget")
  assert widgets.get("collections:OrderedDict") is collections.OrderedDict
  assert widgets.get("jaxtrain.registry:Registry") is Registry


def test_registry_bad_module_path_raises():
  widgets = Registry("widget")
  with pytest.raises(UserError) as e:
    widgets.get("no_such_module_for_jaxtrain_tests:Thing")
  assert "cannot import module 'no_such_module_for_jaxtrain_tests'" in str(e.value)
  assert "widget 'no_such_module_for_jaxtrain_tests:Thing'" in str(e.value)


def test_registry_missing_attribute_raises():
  widgets = Registry("widget")
  with pytest.raises(UserError, match="module 'collections' has no 'NoSuchThing' for widget 'collections:NoSuchThing'"):
    widgets.get("collections:NoSuchThing")


def test_an_optional_duration_set_to_zero_alone_is_unset():
  r = make_reader(every_epochs=0.0, every_steps=None)
  assert config_lib.steps(r, "every", steps_per_epoch=11, batch_size=128, default=None) is None


def test_a_zero_beside_a_positive_unit_is_ignored():
  r = make_reader(total_epochs=0.0, total_steps=30)
  assert config_lib.steps(r, "total", steps_per_epoch=11, batch_size=128) == 30


def test_numpy_scalars_pass_for_numbers():
  r = make_reader(total_steps=np.int64(30), lr=np.float32(0.5))
  assert config_lib.steps(r, "total", steps_per_epoch=11, batch_size=128) == 30
  assert r.get("lr", kind=float) == np.float32(0.5)


def test_a_unit_given_on_the_command_line_replaces_the_files_unit():
  config = ml_collections.ConfigDict()
  config.update(config_lib.duration("total", epochs=40))
  config.evals = ml_collections.ConfigDict({"val": config_lib.duration("every", epochs=10)})
  config.checkpoint = ml_collections.ConfigDict(config_lib.duration("every", steps=100))
  config.total_steps = 500  # As --config.total_steps=500 sets it.
  config.evals.val.every_examples = 1000
  lines = config_lib.command_line_units(config, ["--config.total_steps=500", "--config.evals.val.every_examples",
                                                 "1000", "--config.checkpoint.every_steps=0", "--workdir=x"])
  assert lines == ["--config.evals.val.every_examples replaces the config file's evals.val.every_epochs=10.0",
                   "--config.total_steps replaces the config file's total_epochs=40.0"]
  assert config.total_epochs is None and config.evals.val.every_epochs is None and config.checkpoint.every_steps == 100
  reader = config_lib.Reader(config)
  assert config_lib.steps(reader, "total", steps_per_epoch=7, batch_size=8) == 500
  assert config_lib.steps(reader.evals.val, "every", steps_per_epoch=7, batch_size=8) == 125
  # Both units on the command line (the older way, zeroing one): left as given.
  config.total_epochs = 0.0
  assert config_lib.command_line_units(config, ["--config.total_steps=500", "--config.total_epochs=0"]) == []
  assert config.total_epochs == 0.0
