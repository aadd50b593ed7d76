"""Diagnostics: find the causes of the troubleshooting guide and name the fix.

``port`` (check-port), ``relay_probe`` (test-relay, send-test), ``authstring``
(auth-string), ``doctor``. Every function here returns values; the CLI renders them.
"""
