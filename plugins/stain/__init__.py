"""Built-in stain normalisers (Macenko, Reinhard) and the report's stain normalisation section."""
