"""Planning a run as data: what ``budget=`` and ``hsftrain plan`` decide before training.

``settings`` reads the ``planning`` config group (``conf/planning/default.yaml``: the recipe,
the candidate networks and the thresholds) into a frozen dataclass; ``candidates`` lists the
networks the data is large enough for and their cost model; ``timing`` times real training
steps outside Lightning; ``planner`` turns candidate timings into a plan (pure functions);
``plan`` is the :class:`~hsftrain.planning.plan.Plan` itself, its ``plan.yaml`` and how it is
applied to a config. What is timed and when, and training from a plan, are
``training.budget``'s; keeping a run to its plan is ``training.pace``'s.
"""
