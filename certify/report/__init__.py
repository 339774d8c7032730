"""Signed robustness reports: the in-toto statement, its DSSE envelope, keys, verification and the policy gate.

Modules: ``keys`` (signing keys and key ids), ``dsse`` (envelopes), ``statement`` (assembling the statement),
``schema`` (the predicate's JSON Schema, its eps keys and table columns), ``body`` (the predicate from a run's
typed results), ``verify`` (checking a report), ``policy`` (deployment thresholds), ``render`` and ``html`` (the
text and HTML views).
"""
