"""The experiment machinery every study shares: the loop over cells (:mod:`.loop`), configs, run folders, the
one cell-record layout (:mod:`.records`),
TOML output and plot helpers.

Imports :mod:`theory.truth` and :mod:`theory.verdicts`, never a study.
"""
