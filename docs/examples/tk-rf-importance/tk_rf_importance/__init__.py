"""Random-forest feature importance: which embedding features tell the labels apart."""

from __future__ import annotations

import numpy as np
import pandas as pd

from toolkit import (PALETTE, Analysis, AnalysisContext, Figure, Finding, Needs, Result, Table, hookimpl, new_figure,
                     to_svg)

__version__ = "0.1.0"

TOP = 10


def rf_importance(context: AnalysisContext) -> list[Result]:
    """Table ``main`` (rank, feature, importance) of the TOP features, a bar chart of them, and a
    finding with the forest's out-of-bag accuracy."""
    from sklearn.ensemble import RandomForestClassifier

    x = np.asarray(context.embeddings, dtype=np.float64)
    y = context.metadata["label"].to_numpy()
    forest = RandomForestClassifier(n_estimators=200, oob_score=True, random_state=context.seed)
    forest.fit(x, y)
    order = np.argsort(forest.feature_importances_)[::-1][:TOP]
    top = pd.DataFrame({"rank": np.arange(1, len(order) + 1), "feature": order,
                        "importance": forest.feature_importances_[order]})
    return [
        Table("main", top, f"The {len(top)} most important embedding features (mean decrease in impurity)"),
        _bars(top, context.backbone),
        Finding(f"a random forest separates the labels with out-of-bag accuracy {forest.oob_score_:.2f}",
                detail={"oob_accuracy": float(forest.oob_score_)}),
    ]


def _bars(top: pd.DataFrame, backbone: str | None) -> Figure:
    figure, axes = new_figure(6.0, 3.2)
    axes.bar([str(f) for f in top["feature"]], top["importance"], color=PALETTE[0])
    axes.set_xlabel("embedding feature")
    axes.set_ylabel("importance")
    axes.set_title(f"{backbone}: most important features")
    return Figure("importance", to_svg(figure),
                  alt=f"Bar chart of the importance of the {len(top)} most important {backbone} embedding features.")


@hookimpl
def register_analyses(register):
    """Register ``rf_importance``."""
    register(Analysis(name="rf_importance", run=rf_importance, needs=Needs(labels=True, min_samples=10),
                      title="Random-forest feature importance",
                      description="Which embedding features a random forest relies on to predict the label."))
