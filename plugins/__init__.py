"""tk's built-in plugins: ordinary plugin modules, registered through the same hooks as any other.

``BUILTIN_PLUGINS`` is what the ``tk.builtins`` entry point (pyproject.toml) hands to the registry.
Their order does not matter: analyses are ordered by the results they declare they read.
"""

BUILTIN_PLUGINS = (
    "toolkit.plugins.backbones.resnet50",
    "toolkit.plugins.backbones.efficientnetb0",
    "toolkit.plugins.backbones.densenet201",
    "toolkit.plugins.backbones.encoders",
    "toolkit.plugins.analyses.pca",
    "toolkit.plugins.analyses.ttest",
    "toolkit.plugins.analyses.anova",
    "toolkit.plugins.analyses.correlation",
    "toolkit.plugins.analyses.clustering",
    "toolkit.plugins.analyses.clusters",
    "toolkit.plugins.analyses.probe",
    "toolkit.plugins.analyses.integrity",
    "toolkit.plugins.analyses.gradcam",
    "toolkit.plugins.analyses.clinical",
    "toolkit.plugins.exporters.html_report",
    "toolkit.plugins.exporters.deployment",
    "toolkit.plugins.exporters.savedmodel",
    "toolkit.plugins.exporters.tflite",
    "toolkit.plugins.commands.new_plugin",
    "toolkit.plugins.commands.train",
    "toolkit.plugins.stain.macenko",
    "toolkit.plugins.stain.reinhard",
    "toolkit.plugins.stain.report",
)
