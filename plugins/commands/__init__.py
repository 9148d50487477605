"""Built-in commands added to ``tk`` through the ``register_commands`` hook."""
