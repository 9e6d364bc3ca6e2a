"""The serving image's entry point (`python -m tools.container`); see __main__."""
