"""ShapesWorld: the laptop-scale experiment that trained the shipped SmartEdit-tiny, a user of the library.

It builds on the library's public API (the model, the trainer's stage scripts, the evaluation harness) the way any
experiment would; nothing in ``smartedit.train``, ``smartedit.data`` or ``smartedit.eval`` imports it.

| module | concept |
|---|---|
| :mod:`~smartedit.shapes.world` | the procedural world: scenes, exact edits, training samples, the held-out test set |
| :mod:`~smartedit.shapes.sources` | the trainer's ``shapes:FAMILY:N[:SEED]`` data source kind (an entry point) |
| :mod:`~smartedit.shapes.pretrain` | the tiny VAE, LLaVA and InstructPix2Pix (+ regression control) from scratch |
| :mod:`~smartedit.shapes.editors` | editors of the InstructPix2Pix folders it writes (IP2P-tiny, the control) |
| :mod:`~smartedit.shapes.recipe` | every step from nothing to SmartEdit-tiny, its baselines and the ablation |

Scripts: ``train/shapes_recipe.py`` (the recipe), ``data_recipes/shapes_world.py`` (shards and a test set on disk).
"""
