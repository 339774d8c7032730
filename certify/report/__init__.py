"""Signed robustness reports: the in-toto statement, its DSSE envelope, keys, verification and the policy gate.

Modules: ``keys`` (signing keys and key ids), ``dsse`` (envelopes), ``statement`` (assembling the statement),
``schema`` (the predicate's JSON Schema), ``verify`` (checking a report), ``policy`` (deployment thresholds),
``render`` (the text view).
"""
