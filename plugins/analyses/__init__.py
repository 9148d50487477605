"""Built-in analyses, each registered through ``register_analyses``."""
