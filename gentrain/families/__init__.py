"""The model families gentrain ships, one folder each: models, networks, objectives and samplers together.

Shared code (the engine, the tasks, the API, the metrics) imports none of them: a family reaches the
run through its YAMLs (``configs/model/*.yaml``, ``configs/objective/*.yaml``, ``_target_``) and the
capability types of :mod:`gentrain.models.base`, exactly as a user's own package does.
"""
