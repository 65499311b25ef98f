"""The leaves every layer may use, torch-free: argument checks (validation), atomic writes,
the progress line, id maps, numpy top-k, and the one owner of every default (defaults).
"""
