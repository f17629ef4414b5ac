"""Utilities every layer uses: the content-addressed step cache, run folders and atomic writes, progress of long loops, fault injection points for tests."""
