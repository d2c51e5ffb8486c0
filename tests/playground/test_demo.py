"""The offline demo checkpoint: built once by the tiny recipe, then found in the cache."""

from playground.demo import demo_checkpoint
from playground.ui import EXAMPLES
from training.scratch import TAUGHT


def test_the_demo_is_taught_every_example_the_playground_shows():
    assert set(EXAMPLES) <= set(TAUGHT)


def test_a_built_demo_is_found_again_without_training(demo_model, monkeypatch):
    import training.train

    monkeypatch.setattr(training.train, "main", lambda argv: (_ for _ in ()).throw(AssertionError("retrained")))
    assert demo_checkpoint(demo_model.parent) == demo_model
