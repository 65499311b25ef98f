"""A bundle's torch programs at run time: loading them (io), the device (device), top-k
with exclusions on tensors (ops) and the torch batch engine (engine). Imports torch.
"""
