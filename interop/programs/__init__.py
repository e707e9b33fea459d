"""Endpoint programs the suite starts, each in its stack's own interpreter.

Every program follows the interop runner's endpoint contract (`contract.py`):
settings come from environment variables, files go to DOWNLOADS, exit status 0
is success, 1 failure and 127 "test case not supported".
"""
