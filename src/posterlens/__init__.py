"""posterlens: read a movie from its poster (genres, IMDb-style score, similar movies)."""

__version__ = "0.1.0"


def load(model_dir, cache=None):
    """Load a trained model directory: ``predict(images)`` and ``similar(image, k)``."""
    from posterlens.predict import load as _load

    return _load(model_dir, cache)
