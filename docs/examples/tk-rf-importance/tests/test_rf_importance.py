"""The tk conformance kit on tk_rf_importance, and one check of its numbers."""

import tk_rf_importance
from toolkit import AnalysisContext
from toolkit.store import Store
from toolkit.testing import parametrize_with_checks, registered, synthetic_run


@parametrize_with_checks(registered(tk_rf_importance))
def test_conformance(item, check):
    check(item)


def test_the_class_signal_ranks_first():
    """The kit's synthetic embeddings carry the label in features 0 and 1: the forest finds them."""
    store = Store.open(":memory:")
    run = synthetic_run(store)
    metadata, x = store.embeddings.run_embeddings(run.run_id, run.sets["alpha"])
    context = AnalysisContext(run.run_id, "alpha", x, metadata, {"alpha": x}, store)
    table = tk_rf_importance.rf_importance(context)[0].data
    assert set(table["feature"][:2]) == {0, 1}
