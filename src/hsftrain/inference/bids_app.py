"""The BIDS-App form of ``hsftrain segment``::

    hsftrain segment <bids_dir> <output_dir> participant [--participant-label 01 02]
        [--session-label A] [key=value ...]

turned into the overrides it stands for (``files.bids=true files.path=<bids_dir>
files.output_dir=<output_dir> files.participant_label=[...] files.session_label=[...]``),
so that both forms run the same code. Overrides alone (``files.path=... files.pattern=...``)
are passed on unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from hsftrain.config.compose import ConfigError

#: The BIDS-App options and the key each stands for.
OPTIONS = {
    "--participant-label": "files.participant_label",
    "--participant_label": "files.participant_label",
    "--session-label": "files.session_label",
    "--session_label": "files.session_label",
}
USAGE = (
    "hsftrain segment <bids_dir> <output_dir> participant [--participant-label 01 02] "
    "[--session-label A] [key=value ...]"
)


def _is_override(token: str) -> bool:
    return "=" in token and not token.startswith("-")


def bids_app_overrides(args: Sequence[str]) -> list[str]:
    """The overrides that ``args`` (the words after ``hsftrain segment``, options other
    than ``--cfg``/``--verbose`` included, in order) stand for.

    ``args`` made only of ``key=value`` overrides are returned as they are. Otherwise the
    first three words that are not overrides are ``<bids_dir> <output_dir> participant``;
    ``--participant-label`` and ``--session-label`` take the labels that follow them (up
    to the next option or override; ``01`` or ``sub-01``), repeated or not.

    Raises:
        ConfigError: an unknown option, an analysis level other than ``participant``,
            missing or extra positional words, or a label option without a label.
    """
    positional: list[str] = []
    overrides: list[str] = []
    labels: dict[str, list[str]] = {}
    current: str | None = None
    for token in args:
        if token.startswith("-"):
            name, eq, value = token.partition("=")
            if name not in OPTIONS:
                raise ConfigError(
                    f"{name}: unknown option of hsftrain segment (BIDS-App options: "
                    f"--participant-label, --session-label); usage: {USAGE}"
                )
            current = OPTIONS[name]
            labels.setdefault(current, [])
            if eq:
                labels[current].append(value)
                current = None
        elif _is_override(token):
            overrides.append(token)
            current = None
        elif current is not None:
            labels[current].append(token)
        else:
            positional.append(token)
    for key, values in labels.items():
        if not values:
            option = next(o for o, k in OPTIONS.items() if k == key)
            raise ConfigError(f"{option}: give one label or more, e.g. {option} 01 02")
    if not positional and not labels:
        return overrides
    if len(positional) != 3:
        words = " ".join(positional) or "none"
        raise ConfigError(
            f"hsftrain segment takes key=value overrides, or three words before them "
            f"(got: {words}); usage: {USAGE}"
        )
    bids_dir, output_dir, level = positional
    if level != "participant":
        raise ConfigError(
            f"analysis level {level!r}: hsftrain segment has only the 'participant' level "
            "(the group volumes table is written by every run); usage: " + USAGE
        )
    out = ["files.bids=true", f"files.path={bids_dir}", f"files.output_dir={output_dir}"]
    for key, values in labels.items():
        quoted = ",".join(repr(v) for v in values)
        out.append(f"{key}=[{quoted}]")
    return out + overrides
