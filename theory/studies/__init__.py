"""The studies ``gentransfer run`` knows: ``transfer`` (flow and diffusion transfer grids, dimension laws,
negative controls), ``tgdp`` (the TGDP simulation), ``digits`` (few-shot transfer on real 8x8 digits, c = the label) and
``completion`` (real 8x8 digits in the framework's own form: c = the top half, x = the bottom half).

Each study is a config kind whose cells run through :mod:`theory.engine.loop`. Studies do not import each
other.
"""
