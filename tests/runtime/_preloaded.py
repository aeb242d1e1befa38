"""Imported by a runtime's zygote in test_zygote (``preload``): records the process that did."""

import os

LOADED_BY = os.getpid()
