"""Local certificates over an input region: bound propagation (IBP, CROWN, alpha-CROWN) and local Lipschitz bounds.

Global Lipschitz bounds hold everywhere and so certify little; these hold over one eps-ball (or box) per sample.
Entry points: :func:`certify.local.samples.certify_samples` (one verdict per sample and method) and
:class:`certify.local.bounds.Propagation` (bounds of every tensor over a region).
"""
