"""The one place the version is written: mopt_fast.__version__ and setup.py both read it."""
__version__ = "0.2.0.dev0"
