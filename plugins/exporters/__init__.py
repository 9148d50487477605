"""Built-in exporters, each registered through ``register_exporters``."""
