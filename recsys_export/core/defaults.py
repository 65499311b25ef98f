"""One owner for each default that several layers share (torch-free).

The model kinds, the export formats, the engines, the sizes and budgets a command
line leaves to the library: each is defined here once and imported where it is used
(the CLI's help texts included), so that no layer repeats a literal of another.
"""

from __future__ import annotations

#: The model kinds recsys-export trains and exports.
MODEL_KINDS = ("mf", "densenet")
#: The kind of a module trained elsewhere and exported pair by pair (``recsys_export.byom``).
GENERIC_KIND = "generic"
