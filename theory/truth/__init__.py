"""The ground truth every verdict is held against: tasks with exact densities, closed-form mixtures, KL
estimators, the rate template, the diffusion bounds and the known answers of linear-Gaussian heads.

Imports nothing else from :mod:`theory`.
"""
