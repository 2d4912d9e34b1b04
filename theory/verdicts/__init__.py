"""Verdicts: the checks of the theory's claims against records, their statistics (t intervals, Holm) and the
negative controls each check must FAIL.

Imports only :mod:`theory.truth` from :mod:`theory`.
"""
