"""Configuration: the packaged Hydra configs composed with a user's overrides.

``compose.py`` composes ``conf/`` with ``key=value`` overrides (``overrides.py`` checks
them as typed first; ``resume.py`` merges ``resume=RUN`` with the run's own config),
``values.py`` turns OmegaConf values into plain Python, ``checks.py`` holds the typed value
and output-path checks shared by every command, ``keydocs.py`` the key descriptions that
``--help`` lists.
"""
