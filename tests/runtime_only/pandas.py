"""Not a runtime dependency of mlink-capture: absent here, as in an install from the wheel
(see README.md in this directory)."""

raise ImportError("pandas is a test extra, not a runtime dependency of mlink-capture")
