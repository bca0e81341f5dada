"""One teacher per model: every experiment that names a (full-size) teacher uses its model's
recipe from train_teacher.RECIPES, so they all share one cached teacher instead of each
training its own."""
from experiments import preamble as teacher_lib
from experiments import registry
from core.configs import train_teacher


def test_every_experiment_shares_its_models_teacher():
    checked = 0
    for name in registry.experiment_paths():
        config = registry.load(name)
        teacher = config.get("teacher") if "teacher" in config else (
            config if config.get("program") == "experiments.train_teacher" else None)
        if teacher is None or teacher.get("tiny", False) or teacher.get("data_limit", 0):
            continue
        expected = teacher_lib.teacher_key(train_teacher.get_config(teacher.model))
        assert teacher_lib.teacher_key(teacher) == expected, name
        checked += 1
    assert checked >= 15, checked


def test_recipes_change_only_training_settings():
    resnet = train_teacher.get_config()
    for model, recipe in train_teacher.RECIPES.items():
        config = train_teacher.get_config(model)
        assert config.model == model
        for key, value in recipe.items():
            assert config.train[key] == value
        assert config.dataset == resnet.dataset and config.validation_size == 5000
