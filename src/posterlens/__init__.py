"""posterlens: read a movie from its poster (genres, IMDb-style score, similar movies)."""

__version__ = "0.1.0"
