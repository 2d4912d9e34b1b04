"""The studies ``gentransfer run`` knows: ``transfer`` (flow and diffusion transfer grids, dimension laws,
negative controls), ``tgdp`` (the TGDP simulation) and ``digits`` (few-shot transfer on real 8x8 digits).

Each study is a config kind whose cells run through :mod:`theory.engine.loop`. Studies do not import each
other.
"""
