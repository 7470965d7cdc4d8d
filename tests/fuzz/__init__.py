"""Coverage-guided fuzzing of the sans-IO core (atheris), run for a bounded time."""
