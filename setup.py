"""Package discovery plus one mapping: the repository's configs/ folder ships as ``theory.configs``, so a
pip-installed ``gentransfer`` finds its configs (``gentransfer run default``). Everything else is in
pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["gentransfer", "shared_embed*", "flows*", "diffusion*", "theory*"]),
        "theory.configs",
    ],
    package_dir={"theory.configs": "configs"},
)
