"""``fedmrg serve``: a local web viewer for a trained model (:mod:`fedmrg.serve.app`)."""
