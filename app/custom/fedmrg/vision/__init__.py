"""Federated visual prompt generation (second system): a shared prompt generator writes a per-image prompt for a
frozen ViT (classification) or SAM (segmentation); only the generator, its task embedding and the head / mask decoder
train and travel.

Modules: :mod:`~fedmrg.vision.generator` (prompt generator, static prompts), :mod:`~fedmrg.vision.models` (prompted
ViT / SAM, CNN baselines), :mod:`~fedmrg.vision.backbones` (local checkpoints, test-size models),
:mod:`~fedmrg.vision.builtin` (the MAE-pretrained built-in backbone), :mod:`~fedmrg.vision.data` and
:mod:`~fedmrg.vision.tasks` (readers, site splits), :mod:`~fedmrg.vision.learner` (the federated learner),
:mod:`~fedmrg.vision.bundle` (model folders), :mod:`~fedmrg.vision.cli` (``fedmrg vision``).
"""
